"""vLLM serving: endpoint checks, readiness, and log reading."""

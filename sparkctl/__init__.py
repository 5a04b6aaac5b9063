"""sparkctl: one vLLM endpoint across several DGX Spark machines, with measurements."""

__version__ = "0.1.0"

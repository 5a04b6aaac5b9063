"""Launch backends: pure planners of argv and environment per node."""

"""`sparkctl bench`: the serving benchmark (load generator, statistics, the server's view, reports)."""

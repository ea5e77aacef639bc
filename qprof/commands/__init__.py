"""One module per CLI command; qprof.cli imports each only when it is invoked."""

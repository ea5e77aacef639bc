"""Profiling: NVTX ranges, timing modes, trace parsing, attribution and diagnosis."""

"""Measured ceilings of the card at hand: read and copy bandwidth and tensor-core GEMM rate, cached per card."""

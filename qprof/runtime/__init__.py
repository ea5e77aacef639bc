"""Forward passes: the CPU reference and the CUDA runtime."""

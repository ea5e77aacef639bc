"""qprof's CUDA runtime: PTX kernels loaded with cuda-python into torch's context and stream."""

"""qprof: profile and benchmark quantized LLM inference on NVIDIA GPUs."""

__version__ = "0.1.0"

"""GGUF model loading: config, tensor map, validation and tokenizer."""

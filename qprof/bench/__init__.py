"""`qprof bench`: llama-bench style runs, telemetry, result records, printers, compare and charts."""

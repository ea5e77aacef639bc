"""`qprof check`: every GPU op against an independent reference, in the manner of llama.cpp's test-backend-ops."""

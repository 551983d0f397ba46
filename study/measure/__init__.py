"""Stage 5, measurement: latency and throughput timing, the ONNX Runtime backend and its cache, and model export.
"""

"""Run directory -> one ONNX model bundle, checked against torch (the `train` extra)."""

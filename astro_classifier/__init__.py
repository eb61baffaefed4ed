"""astroclf: classify astronomical alerts and light curves with ONNX models."""

__version__ = "0.1.0"

"""ONNX Runtime serving: model bundles (metadata, providers, buckets) and classify()."""

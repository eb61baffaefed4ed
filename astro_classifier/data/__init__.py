"""The canonical light-curve batch, unit conversions, file readers and training datasets."""

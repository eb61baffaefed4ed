"""Training in PyTorch (the `train` extra): configs, data sets, the one training loop."""

"""Training in PyTorch (the `train` extra): ATAT, the model registry, configs, the loop."""

"""Model families in PyTorch (the `train` extra): each family's torch modules and what the
training loop, the export and serving need to know about it (:mod:`.base`), registered by name
(:mod:`.registry`). Imports only ``core`` and ``features`` of the project."""

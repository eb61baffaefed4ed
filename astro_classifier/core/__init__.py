"""The layer everything else stands on: the light-curve and cutout batches, units, point
quality, spectra, the class taxonomy and the project's errors (numpy and pyarrow only)."""

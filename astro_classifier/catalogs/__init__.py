"""Labelled real sets for training and evaluation (ZTF BTS, ANTARES BTS, manyTDE, SLSN-I, OSC,
ALeRCE examples, TDSS quasars, EROS-1), their spectra, and the splits used on them. Each reader
takes a folder (or one of its files) and imports only :mod:`astro_classifier.core`; the format
registry declares them as input formats (:mod:`astro_classifier.formats.labelled`)."""

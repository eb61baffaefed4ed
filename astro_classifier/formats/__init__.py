"""Input formats: one module per format, each declaring itself once as an
:class:`~astro_classifier.formats.base.InputFormat` (recognise, read files, decode a Kafka
message, image stamps, spectra); :mod:`astro_classifier.formats.registry` lists them and is
the one dispatcher (ZTF Avro/Parquet, Rubin Avro/Parquet/wire, PLAsTiCC, long, JSON, and the
labelled catalogues). No torch."""

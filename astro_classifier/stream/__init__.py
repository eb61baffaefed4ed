"""The Kafka worker behind `astroclf stream` and `astroclf replay` (the `stream` extra)."""

"""Survey alert packets (ZTF Avro, Rubin Avro and Confluent wire format) -> LightCurveBatch."""

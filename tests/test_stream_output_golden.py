"""The stream's output messages, byte for byte, against the shipped output schema.

Fixed classifications (tests/data/make_classification_golden.py, which also regenerates the
golden files) are mapped and encoded as the worker does it; the bytes must equal
tests/data/classification_golden.avro (schemaless Avro) and .jsonl, and the Avro bytes must
read back, with the schema parsed from the ``.avsc`` file the package ships, to the same
records, each valid for that schema.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import fastavro
import numpy as np
import pytest
from fastavro.validation import validate

from astro_classifier.stream.codecs import (
    classification_records,
    classification_schema,
    decode_classification,
    encode_classification,
)
from tests.conftest import PROJECT_ROOT
from tests.data.make_classification_golden import (
    GOLDEN_AVRO,
    GOLDEN_JSON,
    TIMINGS,
    golden_predictions,
    golden_records,
)

AVSC = PROJECT_ROOT / "astro_classifier" / "stream" / "schemas" / "classification.avsc"
REGENERATE = "python tests/data/make_classification_golden.py"


@pytest.fixture(scope="module")
def avsc() -> dict:
    """The output schema, parsed from the file the package ships."""
    return fastavro.parse_schema(json.loads(AVSC.read_text()))


def _read_all(data: bytes, schema: dict) -> list[dict]:
    stream, records = io.BytesIO(data), []
    while stream.tell() < len(data):
        records.append(fastavro.schemaless_reader(stream, schema, None))
    return records


def test_output_avro_bytes_equal_the_golden_bytes() -> None:
    encoded = b"".join(encode_classification(r, "avro") for r in golden_records())
    assert encoded == GOLDEN_AVRO.read_bytes(), (
        "the Avro output changed; if on purpose, run " + REGENERATE
    )


def test_output_json_bytes_equal_the_golden_bytes() -> None:
    encoded = b"".join(encode_classification(r, "json") + b"\n" for r in golden_records())
    assert encoded == GOLDEN_JSON.read_bytes(), (
        "the JSON output changed; if on purpose, run " + REGENERATE
    )


def test_golden_bytes_read_back_and_validate_with_the_shipped_avsc(avsc: dict) -> None:
    records = golden_records()
    back = _read_all(GOLDEN_AVRO.read_bytes(), avsc)
    assert back == records  # float32 values survive exactly
    for record in back:
        assert validate(record, avsc, raise_errors=True)
    assert {f["name"] for f in avsc["fields"]} == set(records[0])  # every field, no other
    # the encoder's schema is the shipped file's
    assert classification_schema() == avsc


def test_records_follow_the_predictions(avsc: dict) -> None:
    """Every label in model order; the top class, broad kind and nulls from the arrays."""
    (with_broad, sources), (real_bogus, _) = golden_predictions()
    records = classification_records(with_broad, sources, TIMINGS)
    for k, record in enumerate(records):
        assert [c["classId"] for c in record["classifications"]] == list(with_broad.labels)
        np.testing.assert_array_equal(
            [c["probability"] for c in record["classifications"]], with_broad.probabilities[k]
        )
        assert record["classId"] == with_broad.labels[int(np.argmax(with_broad.probabilities[k]))]
        assert record["sourceOffset"] == sources[k].offset
    assert [r["alertId"] for r in records] == ["1661382530015060001", None, "7"]
    assert [r["broadClass"] for r in records] == ["transient", "periodic", "stochastic"]
    assert [r["abstain"] for r in records] == [False, True, False]
    (record,) = classification_records(real_bogus, sources[:1], TIMINGS)
    assert record["broadClass"] is None and record["probTransient"] is None
    with pytest.raises(ValueError, match="sources"):
        classification_records(real_bogus, sources, TIMINGS)


def test_real_worker_outputs_validate_with_the_shipped_avsc(avsc: dict, shared_data: Path) -> None:
    """A shipped model's output for real ZTF alerts, through the worker's batch processor:
    each message reads back with the shipped schema and is valid for it."""
    from astro_classifier.inference.model import LoadedModel
    from astro_classifier.stream.batch import BatchProcessor
    from tests.test_stream_units import FakeMessage

    files = sorted((shared_data / "alerts" / "ztf" / "ztf-avro-alert").glob("*.avro"))[:3]
    model = LoadedModel.load("atat-ztf", provider="cpu")
    messages = [FakeMessage(path.read_bytes(), k) for k, path in enumerate(files)]
    result = BatchProcessor(model, "ztf-avro", "avro").process(messages)
    assert len(result.outputs) == len(files) and not result.dead_letters
    for output in result.outputs:
        (record,) = _read_all(output.value, avsc)
        assert validate(record, avsc, raise_errors=True)
        assert record == decode_classification(output.value, "avro")
        assert record["classifierName"] == "atat-ztf"
        assert len(record["classifications"]) == len(model.metadata.labels)

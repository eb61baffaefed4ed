"""Write tests/data/classification_golden.avro and .jsonl: the stream's output messages for fixed
classifications, byte for byte.

The classifications are hand-built :class:`Predictions` (:func:`golden_records`): a model with
broad kinds (an alert id, one missing, an abstention, a non-ASCII object id) and a model
without them (broad fields null), with fixed sources and timings. The ``.avro`` file is the
schemaless Avro encoding of each record, one after the other; the ``.jsonl`` file their JSON
encoding, one per line. tests/test_stream_output_golden.py encodes them again and compares
the bytes, and reads the ``.avro`` file back with the shipped schema
(astro_classifier/stream/schemas/classification.avsc).

Rerun ONLY when the output schema or the record mapping changed on purpose (a changed byte is
a changed product for every consumer of the output topic). From the project root::

    python tests/data/make_classification_golden.py
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from astro_classifier.inference.predictions import Predictions
from astro_classifier.stream.codecs import MessageRef, classification_records, encode_classification

HERE = Path(__file__).resolve().parent
GOLDEN_AVRO = HERE / "classification_golden.avro"
GOLDEN_JSON = HERE / "classification_golden.jsonl"
TIMINGS = {
    "classifiedTimestampMs": 1_700_000_000_123,
    "decodeMs": 1.5,
    "inferenceMs": 12.25,
    "batchSize": 3,
}


def _ids(*values: str | None) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def golden_predictions() -> list[tuple[Predictions, list[MessageRef]]]:
    """The fixed classifications and the messages they came from."""
    fine = np.array(
        [[0.05, 0.875, 0.075], [0.25, 0.25, 0.5], [0.6, 0.1, 0.3]], np.float32
    )  # AGN, SNIa, RRL
    with_broad = Predictions(
        model="atat-ztf",
        model_version="0.3.0",
        labels=("AGN", "SNIa", "RRL"),
        object_id=_ids("ZTF18aaxjdyr", "ZTF21abcdefg", "Zé/1"),
        alert_id=_ids("1661382530015060001", None, "7"),
        probabilities=fine,
        broad_probabilities=np.stack(  # transient, stochastic, periodic
            [fine[:, 1], fine[:, 0], fine[:, 2]], axis=1
        ),
        ood_score=np.array([-1.25, 7.5, 0.0], np.float32),
        abstain=np.array([False, True, False]),
        rows=np.arange(3),
    )
    real_bogus = Predictions(
        model="real-bogus",
        model_version="1.0.0",
        labels=("bogus", "real"),
        object_id=_ids("ZTF19aaaaaaa"),
        alert_id=_ids("42"),
        probabilities=np.array([[0.125, 0.875]], np.float32),
        broad_probabilities=None,
        ood_score=np.array([2.5], np.float32),
        abstain=np.array([True]),
        rows=np.arange(1),
    )
    return [
        (
            with_broad,
            [
                MessageRef("ztf_alerts", 2, 12345, 1_700_000_000_000),
                MessageRef("ztf_alerts", 2, 12346, 1_700_000_000_001),
                MessageRef("ztf_alerts", 0, 7, -1),
            ],
        ),
        (real_bogus, [MessageRef("ztf_alerts", 1, 99, 1_700_000_000_002)]),
    ]


def golden_records() -> list[dict[str, Any]]:
    """The output records of :func:`golden_predictions`, as the worker maps them."""
    return [
        record
        for predictions, sources in golden_predictions()
        for record in classification_records(predictions, sources, TIMINGS)
    ]


def main() -> None:
    records = golden_records()
    GOLDEN_AVRO.write_bytes(b"".join(encode_classification(r, "avro") for r in records))
    GOLDEN_JSON.write_bytes(b"".join(encode_classification(r, "json") + b"\n" for r in records))
    for path in (GOLDEN_AVRO, GOLDEN_JSON):
        print(f"wrote {path.relative_to(HERE.parents[1])} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()

"""Message codecs without a broker: Schema Registry lookups, JSON alerts, replayed files."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from fastavro.schema import load_schema, to_parsing_canonical_form

from astro_classifier.core.errors import InputError
from astro_classifier.formats.jsonalert import decode_json_alert
from astro_classifier.formats.rubin import read_rubin_parquet, read_rubin_wire
from astro_classifier.stream.codecs import SchemaRegistry, decode_message
from astro_classifier.stream.replay import file_messages


@pytest.fixture
def registry(shared_data: Path) -> Iterator[str]:
    """A stand-in Confluent Schema Registry on loopback that knows schema id 704 (v7.4)."""
    folder = shared_data / "alerts" / "lsst" / "schema" / "7" / "4"
    schema = to_parsing_canonical_form(load_schema(str(folder / "lsst.v7_4.alert.avsc")))
    requests: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            requests.append(self.path)
            if self.path == "/schemas/ids/704":
                body, status = json.dumps({"schema": schema}).encode(), 200
            elif self.path == "/subjects":  # a registry holding schemas: 404s are genuine
                body, status = b'["lsst-alerts-value"]', 200
            else:
                body, status = b'{"error_code": 40403, "message": "Schema not found"}', 404
            self.send_response(status)
            self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
    assert requests.count("/schemas/ids/704") <= 1  # fetched once, then cached


def test_wire_messages_decode_with_a_schema_registry(shared_data: Path, registry: str) -> None:
    schemas = SchemaRegistry(registry)
    files = sorted((shared_data / "alerts" / "lsst" / "wire-v7.4").glob("*.avro"))
    for path in files:
        got = decode_message(path.read_bytes(), "rubin-wire", schemas, path.name)
        expected = read_rubin_wire([path], shared_data / "alerts" / "lsst" / "schema")
        np.testing.assert_array_equal(got.flux, expected.flux)
        assert got.alert_id.tolist() == expected.alert_id.tolist()


def test_an_id_the_registry_does_not_know_is_an_input_error(registry: str) -> None:
    message = b"\x00" + (999).to_bytes(4, "big") + b"\x02\x04"
    with pytest.raises(InputError, match="schema id 999"):
        decode_message(message, "rubin-wire", SchemaRegistry(registry), "topic[0]@5")


def test_replayed_parquet_rows_round_trip_as_one_row_messages(shared_data: Path) -> None:
    path = shared_data / "alerts" / "lsst" / "fink-v10.0.parquet"
    expected = read_rubin_parquet(path)
    messages = file_messages(path)
    assert len(messages) == len(expected) == 25
    for k, (_key, value) in enumerate(messages):
        got = decode_message(value, "rubin-parquet", None, f"message {k}")
        assert got.object_id[0] == expected.object_id[k]
        assert got.alert_id[0] == expected.alert_id[k]
        s = slice(expected.offsets[k], expected.offsets[k + 1])
        np.testing.assert_allclose(got.time, expected.time[s])
        np.testing.assert_array_equal(got.band, expected.band[s])
        np.testing.assert_allclose(got.flux, expected.flux[s], rtol=1e-6)
        np.testing.assert_array_equal(got.detected, expected.detected[s])


def test_avro_files_are_replayed_unchanged(shared_data: Path) -> None:
    path = next((shared_data / "alerts" / "ztf" / "ztf-avro-alert").glob("*.avro"))
    assert file_messages(path) == [(None, path.read_bytes())]


@pytest.mark.parametrize(
    ("value", "keyword"),
    [
        (b"{not json", "not an astroclf JSON alert"),
        (b'{"object_id": "a", "points": []}', "no points"),
        (
            b'{"object_id": "a", "points": [{"mjd": 1, "band": "q", "flux": 1, "flux_err": 1}]}',
            "unknown band",
        ),
        (b'{"points": [{"mjd": 1, "band": "g", "flux": 1, "flux_err": 1}]}', "object_id"),
    ],
)
def test_bad_json_alerts_are_input_errors(value: bytes, keyword: str) -> None:
    with pytest.raises(InputError, match=keyword):
        decode_json_alert(value, "topic[0]@1")


def test_classification_records_carry_the_broad_kind_and_abstention() -> None:
    from astro_classifier.inference.predictions import Predictions
    from astro_classifier.stream.codecs import (
        MessageRef,
        classification_records,
        decode_classification,
        encode_classification,
    )

    predictions = Predictions(
        model="m",
        model_version="1",
        labels=("RRL", "SNIa"),
        object_id=np.array(["ZTF1"], dtype=object),
        alert_id=np.array(["7"], dtype=object),
        probabilities=np.array([[0.3, 0.7]], np.float32),
        broad_probabilities=np.array([[0.7, 0.0, 0.3]], np.float32),
        ood_score=np.array([-3.5], np.float32),
        abstain=np.array([True]),
        rows=np.array([0]),
    )
    timings = {"classifiedTimestampMs": 1, "decodeMs": 1.0, "inferenceMs": 1.0, "batchSize": 1}
    (record,) = classification_records(predictions, [MessageRef("t", 0, 5, 10)], timings)
    assert [c["classId"] for c in record["classifications"]] == ["RRL", "SNIa"]
    assert record["classId"] == "SNIa"
    for output_format in ("avro", "json"):
        back = decode_classification(encode_classification(record, output_format), output_format)
        assert back["broadClass"] == "transient" and back["abstain"] is True
        assert back["probPeriodic"] == pytest.approx(0.3) and back["oodScore"] == pytest.approx(
            -3.5
        )

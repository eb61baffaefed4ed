"""Format detection and the one reading entry point, on the real files of every format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from astro_classifier.core.errors import InputError
from astro_classifier.formats.longformat import write_long
from astro_classifier.formats.registry import FORMATS, detect_format, read_light_curves


def _first(shared_data: Path, folder: str, pattern: str = "*.avro") -> Path:
    return sorted((shared_data / folder).glob(pattern))[0]


@pytest.mark.parametrize(
    ("folder", "pattern", "expected"),
    [
        ("alerts/ztf/ztf-avro-alert", "*.avro", "ztf-avro"),
        ("alerts/ztf/fink-v3.3", "*.avro", "ztf-avro"),
        ("alerts/ztf/fink-v4.02", "*.avro", "ztf-avro"),  # Spark topLevelRecord
        ("alerts/lsst/fink-v7.4", "*.avro", "rubin-avro"),  # also topLevelRecord
        ("alerts/elasticc/v0.9", "*.avro", "rubin-avro"),
        ("alerts/lsst/wire-v7.4", "*.avro", "rubin-wire"),  # wire format despite .avro
        ("alerts/lsst", "fink-v10.0.parquet", "rubin-parquet"),
        ("lightcurves/plasticc", "plasticc_train_lightcurves.csv.gz", "plasticc"),
        ("lightcurves/eros1", "train.csv", "eros1"),
    ],
)
def test_real_files_are_detected(shared_data, folder, pattern, expected):
    assert detect_format(_first(shared_data, folder, pattern)) == expected


def test_long_format_is_detected(tmp_path, shared_data):
    batch = read_light_curves([_first(shared_data, "alerts/ztf/fink-v3.3")])
    write_long(batch, tmp_path / "points.parquet")
    assert detect_format(tmp_path / "points.parquet") == "long"
    csv = tmp_path / "points.csv"
    csv.write_text("object_id,mjd,band,flux,flux_err\na,60000.0,g,1.0,0.5\n")
    assert detect_format(csv) == "long"


def test_mixed_inputs_are_grouped_and_concatenated(tmp_path, shared_data):
    ztf = sorted((shared_data / "alerts/ztf/ztf-avro-alert").glob("*.avro"))
    eros1 = shared_data / "lightcurves/eros1/train.csv"
    rubin = shared_data / "alerts/lsst/fink-v10.0.parquet"
    batch = read_light_curves([ztf[0], eros1, rubin, ztf[1]])
    assert len(batch) == 2 + 2912 + 25
    # groups in order of first appearance: ZTF (both files), then EROS-1, then Rubin
    assert batch.object_id[:2].tolist() == ["ZTF18aaxjdyr", "ZTF17aaacxxf"]
    assert batch.object_id[2] == "135_9613"
    assert batch.label[2] == "RRL" and batch.label[0] == ""
    assert np.isnan(batch.metadata["period"][:2]).all()


def test_rubin_wire_needs_and_uses_schema_dir(shared_data):
    wire = sorted((shared_data / "alerts/lsst/wire-v7.4").glob("*.avro"))
    with pytest.raises(InputError, match="schema_dir"):
        read_light_curves(wire)
    batch = read_light_curves(wire, schema_dir=shared_data / "alerts/lsst/schema")
    assert len(batch) == len(wire) == 5


def test_metadata_is_passed_to_a_single_table(shared_data, tmp_path):
    batch = read_light_curves([shared_data / "lightcurves/eros1/train.csv"])
    points, objects = tmp_path / "points.parquet", tmp_path / "objects.parquet"
    write_long(batch.select(np.arange(5)), points, objects)
    again = read_light_curves(points, metadata=objects)
    assert again.label.tolist() == batch.label[:5].tolist()
    with pytest.raises(InputError, match="single plasticc or long") as info:
        read_light_curves([points, points], metadata=objects)
    assert info.value.source == str(objects)


def test_explicit_format_is_used_and_checked(shared_data, tmp_path):
    path = _first(shared_data, "alerts/ztf/fink-v3.3")
    assert len(read_light_curves([path], format="ztf-avro")) == 1
    with pytest.raises(InputError, match="unknown format 'ztf'.*rubin-wire"):
        read_light_curves([path], format="ztf")


def _undetectable_files(tmp_path: Path) -> dict[str, Path]:
    text = tmp_path / "notes.txt"
    text.write_text("not light curves\n")
    table = tmp_path / "objects.csv"
    table.write_text("objectId,magpsf\nZTF1,18.0\n")
    avsc = tmp_path / "schema.avro"
    avsc.write_bytes(b'{"type": "record"}')
    return {"text": text, "unrelated_table": table, "json_named_avro": avsc}


@pytest.mark.parametrize("kind", ["text", "unrelated_table", "json_named_avro"])
def test_undetectable_file_names_it_and_lists_formats(tmp_path, kind):
    path = _undetectable_files(tmp_path)[kind]
    with pytest.raises(InputError, match="cannot tell the input format") as info:
        read_light_curves([path])
    assert info.value.source == str(path)
    assert all(name in info.value.reason for name in FORMATS)


@pytest.mark.parametrize("content", [None, b""])
def test_missing_or_empty_file_is_an_input_error(tmp_path, content):
    path = tmp_path / "alert.avro"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError) as info:
        detect_format(path)
    assert info.value.source == str(path)


def test_corrupt_avro_header_is_an_input_error(tmp_path, shared_data):
    path = tmp_path / "alert.avro"
    path.write_bytes(_first(shared_data, "alerts/ztf/fink-v3.3").read_bytes()[:30])
    with pytest.raises(InputError, match="Avro container header") as info:
        detect_format(path)
    assert info.value.source == str(path)


def test_eros1_needs_its_arrays_file_beside_it(tmp_path, shared_data):
    static = tmp_path / "train.csv"
    header = (shared_data / "lightcurves/eros1/train.csv").read_text().splitlines()[0]
    static.write_text(header + "\n")
    with pytest.raises(InputError, match="train_varlength_features.csv.gz not found") as info:
        read_light_curves([static])
    assert info.value.source == str(static)


def test_stream_settings_accept_every_message_format_of_the_registry():
    from typing import get_args

    from astro_classifier.formats.registry import MESSAGE_FORMATS
    from astro_classifier.stream.config import MessageFormat as InputFormat

    assert set(get_args(InputFormat)) == set(MESSAGE_FORMATS)


def test_a_schema_without_a_file_is_recognised_like_the_file(tmp_path: Path) -> None:
    """Rows that arrive as Arrow batches (Spark, dataset scans) are recognised from their
    schema as their Parquet file would be; an unknown schema names its source."""
    import pyarrow as pa

    from astro_classifier.formats.registry import detect_schema_format

    unknown = pa.schema([("flux", pa.float64()), ("when", pa.float64())])
    with pytest.raises(InputError, match="spark partition 3"):
        detect_schema_format(unknown, "spark partition 3")

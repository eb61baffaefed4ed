"""Bad input through the command line: a clear error, a non-zero exit, and no output.

For `astroclf classify` every bad input must give: exit code 1 (2 for a bad option value,
Click's usage error), one ``error:`` message that names the offending file and says what
was expected, no traceback (in CliRunner an unhandled exception is kept in
``result.exception`` rather than printed, so that is what is checked), and no output file
nor temporary file in the output folder. Bad files are derived from the committed example
or from real alerts in shared data and written into ``tmp_path``.

Rich hard-wraps long messages at the console width (a library bug, see
``test_error_message_is_one_line``), so the content checks join the wrapped lines first;
rich keeps the space at each break, so joining restores the message exactly.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from astro_classifier.cli.app import app

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_DIR = PROJECT_ROOT / "examples" / "plasticc"
EXAMPLE_LC = EXAMPLE_DIR / "lightcurves.csv"
EXAMPLE_META = EXAMPLE_DIR / "metadata.csv"
BANDS = "ugrizy"  # PLAsTiCC passband 0-5
AVRO_SYNC_BYTES = 16

runner = CliRunner(env={"COLUMNS": "240"})


def _stderr(result) -> str:
    try:
        return result.stderr
    except ValueError:  # Click < 8.2 with mixed streams: stderr is inside output
        return result.output


def _message(result) -> str:
    """The error output with rich's line wrapping undone."""
    return "".join(_stderr(result).splitlines())


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    """An existing, empty output folder, so that leftover temporary files would show."""
    path = tmp_path / "out"
    path.mkdir()
    return path


@pytest.fixture
def in_dir(tmp_path: Path) -> Path:
    path = tmp_path / "in"
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def example() -> pa.Table:
    return pacsv.read_csv(EXAMPLE_LC)


def classify(out_dir: Path, *args: str | Path) -> object:
    return runner.invoke(
        app, ["classify", *[str(a) for a in args], "-o", str(out_dir / "out.parquet")]
    )


def assert_clean_failure(result, out_dir: Path | None, names: str, *keywords: str) -> str:
    """Exit 1, one `error:` message naming ``names`` with every keyword, no traceback,
    nothing in ``out_dir``. Returns the (unwrapped) message."""
    assert result.exit_code == 1, f"exit {result.exit_code}: {result.output}"
    assert isinstance(result.exception, SystemExit), f"unhandled {result.exception!r}"
    assert "Traceback" not in result.output
    lines = _stderr(result).strip().splitlines()
    assert lines, "no error message"
    assert lines[0].startswith("error:"), lines
    assert sum(line.startswith("error:") for line in lines) == 1, lines
    message = _message(result)
    assert names in message, message
    for keyword in keywords:
        assert keyword in message, f"{keyword!r} not in {message!r}"
    if out_dir is not None:
        assert sorted(p.name for p in out_dir.iterdir()) == []
    return message


def _long_points(example: pa.Table, n: int = 200) -> dict[str, list]:
    """The first ``n`` points of the example as long-format columns (band letters)."""
    head = example.slice(0, n)
    return {
        "object_id": [str(o) for o in head.column("object_id").to_pylist()],
        "mjd": head.column("mjd").to_pylist(),
        "band": [BANDS[p] for p in head.column("passband").to_pylist()],
        "flux": head.column("flux").to_pylist(),
        "flux_err": head.column("flux_err").to_pylist(),
    }


def _ztf_alert(shared_data: Path) -> Path:
    return sorted((shared_data / "alerts" / "ztf" / "ztf-avro-alert").glob("*.avro"))[0]


# -- tables -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("format_option", "keywords"),
    [
        ([], ["cannot tell the input format", "flux_err", "expected", "plasticc"]),
        (["--format", "plasticc"], ["missing column(s) ['flux']", "expected"]),
    ],
    ids=["detected", "explicit"],
)
def test_missing_flux_column(
    example: pa.Table, in_dir: Path, out_dir: Path, format_option: list[str], keywords: list[str]
) -> None:
    path = in_dir / "no_flux.csv"
    pacsv.write_csv(example.drop_columns(["flux"]), path)
    result = classify(out_dir, path, *format_option)
    assert_clean_failure(result, out_dir, str(path), *keywords)


@pytest.mark.parametrize("name", ["empty.csv", "empty.parquet", "empty.avro"])
def test_empty_file(in_dir: Path, out_dir: Path, name: str) -> None:
    path = in_dir / name
    path.write_bytes(b"")
    assert_clean_failure(classify(out_dir, path), out_dir, str(path), "empty")


def test_header_only_csv(in_dir: Path, out_dir: Path) -> None:
    path = in_dir / "header_only.csv"
    path.write_text(EXAMPLE_LC.read_text().splitlines()[0] + "\n")
    assert_clean_failure(classify(out_dir, path), out_dir, str(path), "no rows")


def test_unknown_band_in_long_format(example: pa.Table, in_dir: Path, out_dir: Path) -> None:
    columns = _long_points(example)
    columns["band"][7] = "q"
    path = in_dir / "band_q.parquet"
    pq.write_table(pa.table(columns), path)
    assert_clean_failure(classify(out_dir, path), out_dir, str(path), "unknown band", "expected")


def test_unknown_plasticc_passband(example: pa.Table, in_dir: Path, out_dir: Path) -> None:
    passband = example.column("passband").to_pylist()
    passband[11] = 7
    table = example.set_column(
        example.schema.get_field_index("passband"), "passband", pa.array(passband)
    )
    path = in_dir / "passband7.csv"
    pacsv.write_csv(table, path)
    assert_clean_failure(
        classify(out_dir, path, "--metadata", EXAMPLE_META), out_dir, str(path), "[7]", "0-5"
    )


def test_nan_flux_in_long_format(example: pa.Table, in_dir: Path, out_dir: Path) -> None:
    columns = _long_points(example)
    columns["flux"][3] = float("nan")
    path = in_dir / "nan_flux.parquet"
    pq.write_table(pa.table(columns), path)
    assert_clean_failure(classify(out_dir, path), out_dir, str(path), "NaN", "flux: 1", "finite")


def test_metadata_without_object_id(in_dir: Path, out_dir: Path) -> None:
    path = in_dir / "metadata_no_id.csv"
    pacsv.write_csv(pacsv.read_csv(EXAMPLE_META).drop_columns(["object_id"]), path)
    result = classify(out_dir, EXAMPLE_LC, "--metadata", path)
    assert_clean_failure(result, out_dir, str(path), "object_id", "missing column")


# -- Avro ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("keep", "keyword"),
    [(64, "header"), (0.5, "cannot decode"), (-1, "sync marker")],
    ids=["inside-header", "half", "last-byte-missing"],
)
def test_truncated_ztf_alert(
    shared_data: Path, in_dir: Path, out_dir: Path, keep: float, keyword: str
) -> None:
    data = _ztf_alert(shared_data).read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep
    path = in_dir / "truncated.avro"
    path.write_bytes(data[:cut])
    result = classify(out_dir, path, "--model", "atat-ztf")
    assert_clean_failure(result, out_dir, str(path), keyword, "Avro")


def test_bit_flipped_sync_marker(shared_data: Path, in_dir: Path, out_dir: Path) -> None:
    data = bytearray(_ztf_alert(shared_data).read_bytes())
    sync = bytes(data[-AVRO_SYNC_BYTES:])
    # An Avro container ends each block with the sync marker written once in the header.
    assert data.find(sync) < len(data) - AVRO_SYNC_BYTES
    data[-AVRO_SYNC_BYTES] ^= 0x01
    path = in_dir / "bad_sync.avro"
    path.write_bytes(bytes(data))
    result = classify(out_dir, path, "--model", "atat-ztf")
    assert_clean_failure(result, out_dir, str(path), "sync marker", "expected ZTF alerts")


def test_non_avro_file_named_avro(in_dir: Path, out_dir: Path) -> None:
    path = in_dir / "not_really.avro"
    path.write_text("objectId,candid\nZTF18abc,123\n")
    assert_clean_failure(
        classify(out_dir, path), out_dir, str(path), "cannot tell the input format", "expected"
    )


def test_non_avro_file_with_explicit_avro_format(in_dir: Path, out_dir: Path) -> None:
    path = in_dir / "not_really.avro"
    path.write_text("objectId,candid\nZTF18abc,123\n")
    result = classify(out_dir, path, "--format", "ztf-avro", "--model", "atat-ztf")
    assert_clean_failure(result, out_dir, str(path), "Avro magic", "expected ZTF alerts")


def test_truncated_wire_format_message(shared_data: Path, in_dir: Path, out_dir: Path) -> None:
    lsst = shared_data / "alerts" / "lsst"
    data = sorted((lsst / "wire-v7.4").iterdir())[0].read_bytes()
    path = in_dir / "truncated_wire.avro"
    path.write_bytes(data[: len(data) // 2])
    result = classify(out_dir, path, "--schema-dir", lsst / "schema")
    assert_clean_failure(result, out_dir, str(path), "cannot decode", "wire-format")


# -- options ------------------------------------------------------------------------------
def test_unknown_format_value(out_dir: Path) -> None:
    result = classify(out_dir, EXAMPLE_LC, "--format", "votable")
    assert result.exit_code == 2  # Click's usage error
    assert isinstance(result.exception, SystemExit)
    text = _stderr(result)
    assert "--format" in text
    assert "'votable'" in text
    for name in ("plasticc", "ztf-avro", "rubin-wire"):
        assert name in text
    assert sorted(out_dir.iterdir()) == []


def test_wire_format_without_schema_dir(shared_data: Path, out_dir: Path) -> None:
    path = sorted((shared_data / "alerts" / "lsst" / "wire-v7.4").iterdir())[0]
    assert_clean_failure(classify(out_dir, path), out_dir, str(path), "schema_dir")


# -- several inputs -----------------------------------------------------------------------
def test_one_bad_input_among_several_writes_nothing(in_dir: Path, out_dir: Path) -> None:
    bad = in_dir / "garbage.avro"
    bad.write_bytes(b"\x89 this is not an alert")
    result = classify(out_dir, EXAMPLE_LC, bad)
    assert_clean_failure(result, out_dir, str(bad), "cannot tell the input format")


def test_one_corrupt_alert_among_good_ones_writes_nothing(
    shared_data: Path, in_dir: Path, out_dir: Path
) -> None:
    good = sorted((shared_data / "alerts" / "ztf" / "fink-v3.3").glob("*.avro"))[:5]
    data = good[0].read_bytes()
    bad = in_dir / "truncated.avro"
    bad.write_bytes(data[: len(data) * 2 // 3])
    result = classify(out_dir, *good[:3], bad, *good[3:], "--model", "atat-ztf")
    assert_clean_failure(result, out_dir, str(bad), "cannot decode")


def test_failed_run_keeps_an_existing_output(in_dir: Path, out_dir: Path) -> None:
    previous = out_dir / "out.parquet"
    previous.write_bytes(b"previous result")
    bad = in_dir / "empty.csv"
    bad.write_bytes(b"")
    assert_clean_failure(classify(out_dir, EXAMPLE_LC, bad), None, str(bad), "empty")
    assert previous.read_bytes() == b"previous result"
    assert [p.name for p in out_dir.iterdir()] == ["out.parquet"]


# -- evaluate -----------------------------------------------------------------------------
def test_evaluate_without_labels(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = runner.invoke(app, ["evaluate", "atat-lsst", str(EXAMPLE_LC), "-o", str(out)])
    assert_clean_failure(result, None, str(EXAMPLE_LC), "no labels", "--metadata")
    assert not out.exists()


def test_evaluate_alerts_without_labels(shared_data: Path, tmp_path: Path) -> None:
    files = sorted((shared_data / "alerts" / "ztf" / "ztf-avro-alert").glob("*.avro"))
    out = tmp_path / "eval"
    result = runner.invoke(app, ["evaluate", "atat-ztf", *[str(f) for f in files], "-o", str(out)])
    assert_clean_failure(result, None, "no labels", "label")
    assert not out.exists()


# -- train --------------------------------------------------------------------------------
GOOD_CONFIG = """\
data:
  light_curves: lightcurves.csv
training:
  epochs: 2
export:
  name: test
"""


@pytest.mark.parametrize(
    ("config", "overrides", "field", "keyword"),
    [
        (
            GOOD_CONFIG.replace("  epochs: 2", "  epochs: 2\n  epoch: 3"),
            [],
            "training.epoch",
            "Extra inputs",
        ),
        (GOOD_CONFIG + "colour: red\n", [], "colour", "Extra inputs"),
        (GOOD_CONFIG.replace("epochs: 2", "epochs: many"), [], "training.epochs", "integer"),
        (GOOD_CONFIG, ["--set", "training.learning_rate=fast"], "training.learning_rate", "number"),
    ],
    ids=["unknown-key", "unknown-section", "bad-type", "bad-type-override"],
)
def test_train_invalid_config(
    tmp_path: Path, config: str, overrides: list[str], field: str, keyword: str
) -> None:
    pytest.importorskip("torch")
    path = tmp_path / "bad_config.yaml"
    path.write_text(config)
    run_dir = tmp_path / "run"
    result = runner.invoke(app, ["train", str(path), "-o", str(run_dir), *overrides])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    text = _stderr(result)
    assert text.startswith("error:")
    assert f"{path}: invalid config" in text
    assert field in text.split()  # the field is named on a line of its own
    assert keyword in text
    assert not run_dir.exists()


# -- regressions: bugs found by these tests ------------------------------------------------
def test_error_message_is_one_line(example: pa.Table, in_dir: Path, out_dir: Path) -> None:
    path = in_dir / "no_flux.csv"
    pacsv.write_csv(example.drop_columns(["flux"]), path)
    result = runner.invoke(
        app, ["classify", str(path), "-o", str(out_dir / "out.parquet")], env={"COLUMNS": "100"}
    )
    assert result.exit_code == 1
    assert len(_stderr(result).strip().splitlines()) == 1, _stderr(result)


@pytest.mark.parametrize("folder", ["odd[/x]", "[red]"])
def test_error_message_shows_brackets_verbatim(tmp_path: Path, out_dir: Path, folder: str) -> None:
    path = tmp_path / folder / "empty.csv"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    assert_clean_failure(classify(out_dir, path), out_dir, str(path), "empty")


def test_unknown_band_is_named(example: pa.Table, in_dir: Path, out_dir: Path) -> None:
    columns = _long_points(example)
    columns["band"][7] = "q"
    path = in_dir / "band_q.parquet"
    pq.write_table(pa.table(columns), path)
    assert_clean_failure(classify(out_dir, path), out_dir, str(path), "unknown band(s) ['q']")


def test_nan_flux_in_plasticc_csv(example: pa.Table, in_dir: Path, out_dir: Path) -> None:
    flux = example.column("flux").to_pylist()
    flux[3] = float("nan")
    table = example.set_column(example.schema.get_field_index("flux"), "flux", pa.array(flux))
    path = in_dir / "nan_flux.csv"
    pacsv.write_csv(table, path)
    try:
        result = classify(out_dir, path, "--metadata", EXAMPLE_META)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # a Rust panic escapes CliRunner, which catches Exception
        pytest.fail(f"unhandled {type(exc).__name__}: {exc}")
    assert_clean_failure(result, out_dir, str(path), "NaN")


def test_output_path_is_a_directory(tmp_path: Path, out_dir: Path) -> None:
    result = runner.invoke(app, ["classify", str(EXAMPLE_LC), "-o", str(out_dir)])
    assert_clean_failure(result, out_dir, str(out_dir), "directory")

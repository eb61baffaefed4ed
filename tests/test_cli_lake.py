"""`astroclf classify` on Parquet alert rows (a broker's data lake): streamed in batches.

The lake is built in ``tmp_path`` from real shared alerts (ZTF fink-v4.02, cutouts kept, in
several files of a folder, as Spark writes them) and the shared Rubin Parquet file. The
streamed path must give the rows classify() gives on the same alerts read whole, read a
bounded number of rows at a time, and put rows it cannot read beside the output, not in the
way of the others.
"""

from __future__ import annotations

from pathlib import Path

import fastavro
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from astro_classifier.cli import classify as classify_cli
from astro_classifier.cli.app import app
from astro_classifier.formats.registry import read_light_curves
from astro_classifier.inference.classify import classify
from astro_classifier.inference.model import LoadedModel

runner = CliRunner(env={"COLUMNS": "200"})


def _stderr(result) -> str:
    return result.output + (str(result.exception) if result.exception else "")


@pytest.fixture(scope="module")
def ztf_rows(shared_data) -> pa.Table:
    records = []
    for path in sorted((shared_data / "alerts/ztf/fink-v4.02").glob("*.avro"))[:120]:
        with path.open("rb") as stream:
            records += list(fastavro.reader(stream))
    return pa.Table.from_pylist(records)


def _lake(table: pa.Table, folder: Path, parts: int = 3) -> Path:
    """``table`` as a folder of ``parts`` Parquet files plus Spark's bookkeeping files."""
    folder.mkdir()
    step = -(-table.num_rows // parts)
    for k in range(parts):
        pq.write_table(table.slice(k * step, step), folder / f"part-{k:05d}.snappy.parquet")
    (folder / "_SUCCESS").write_bytes(b"")
    (folder / ".part-00000.snappy.parquet.crc").write_bytes(b"crc")
    return folder


def _assert_same_as_classify(out: Path, files: list[Path], model: str) -> None:
    expected = classify(read_light_curves(files), LoadedModel.load(model, provider="cpu"))
    expected = expected.to_arrow()
    got = pq.read_table(out)
    assert got.schema == expected.schema
    assert got.column("alert_id").to_pylist() == expected.column("alert_id").to_pylist()
    assert got.column("class").to_pylist() == expected.column("class").to_pylist()
    for name in expected.column_names:
        if name.startswith("prob_") and expected.column(name).null_count == 0:
            np.testing.assert_allclose(got.column(name), expected.column(name), atol=1e-6)


def test_a_folder_of_ztf_rows_is_streamed_in_batches(ztf_rows, tmp_path, monkeypatch):
    lake = _lake(ztf_rows, tmp_path / "lake")
    seen: list[int] = []
    core = classify_cli.classify_batches

    def spy(batches, *args, **kwargs):
        def counted():
            for batch in batches:
                seen.append(batch.num_rows)
                assert "cutoutScience" not in batch.schema.names  # only what the reader uses
                yield batch

        return core(counted(), *args, **kwargs)

    monkeypatch.setattr(classify_cli, "classify_batches", spy)
    out = tmp_path / "out.parquet"
    args = ["classify", str(lake), "-m", "atat-ztf", "-o", str(out), "--rows-per-batch", "25"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, _stderr(result)
    assert max(seen) <= 25 and sum(seen) == ztf_rows.num_rows
    assert "120 of 120 alert rows" in result.output and "rows/s" in result.output
    assert not (tmp_path / "out.errors.parquet").exists()
    _assert_same_as_classify(out, sorted(lake.glob("part-*.parquet")), "atat-ztf")


def test_rubin_rows_give_the_rows_of_classify(shared_data, tmp_path):
    path = shared_data / "alerts/lsst/fink-v10.0.parquet"
    out = tmp_path / "out.parquet"
    result = runner.invoke(app, ["classify", str(path), "-m", "atat-lsst", "-o", str(out)])
    assert result.exit_code == 0, _stderr(result)
    _assert_same_as_classify(out, [path], "atat-lsst")


def _with_bad_row(table: pa.Table, row: int) -> tuple[pa.Table, str]:
    rows = table.to_pylist()
    rows[row]["candidate"]["fid"] = 7  # no such ZTF filter: the reader refuses the alert
    return pa.Table.from_pylist(rows, schema=table.schema), str(rows[row]["candid"])


def test_a_malformed_row_goes_to_the_errors_file(ztf_rows, tmp_path):
    table, bad = _with_bad_row(ztf_rows.slice(0, 40), 7)
    lake = _lake(table, tmp_path / "lake", parts=2)
    out = tmp_path / "out.parquet"
    result = runner.invoke(app, ["classify", str(lake), "-m", "atat-ztf", "-o", str(out)])
    assert result.exit_code == 0, _stderr(result)
    assert pq.read_table(out).num_rows == 39
    errors = pq.read_table(tmp_path / "out.errors.parquet").to_pylist()
    assert [(e["alert_id"], e["stage"]) for e in errors] == [(bad, "decode")]
    assert "fid=7" in errors[0]["reason"] and str(lake) in errors[0]["reason"]
    assert "1 row(s) not classified" in result.output

    strict = runner.invoke(
        app,
        ["classify", str(lake), "-m", "atat-ztf", "-o", str(tmp_path / "s.parquet"), "--strict"],
    )
    assert strict.exit_code == 1 and "fid=7" in strict.output
    assert not (tmp_path / "s.parquet").exists()


def test_a_lake_with_nothing_classifiable_writes_nothing(ztf_rows, tmp_path):
    table, _ = _with_bad_row(ztf_rows.slice(0, 1), 0)
    lake = _lake(table, tmp_path / "lake", parts=1)
    out = tmp_path / "out.parquet"
    result = runner.invoke(app, ["classify", str(lake), "-m", "atat-ztf", "-o", str(out)])
    assert result.exit_code == 1
    assert "none of the 1 alert row(s)" in result.output
    assert not out.exists() and not (tmp_path / "out.errors.parquet").exists()


def test_rows_of_two_formats_in_one_run_are_refused(ztf_rows, shared_data, tmp_path):
    lake = _lake(ztf_rows.slice(0, 10), tmp_path / "lake", parts=1)
    rubin = shared_data / "alerts/lsst/fink-v10.0.parquet"
    result = runner.invoke(
        app, ["classify", str(lake), str(rubin), "-o", str(tmp_path / "o.parquet")]
    )
    assert result.exit_code == 1
    assert "several formats" in result.output


def test_spark_without_pyspark_names_the_extra(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_pyspark(name, *args, **kwargs):
        if name.startswith("pyspark"):
            raise ImportError("No module named 'pyspark'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyspark)
    result = runner.invoke(
        app, ["classify", str(tmp_path), "-m", "atat-ztf", "-o", str(tmp_path / "o"), "--spark"]
    )
    assert result.exit_code == 1
    assert "astro-classifier[spark]" in result.output

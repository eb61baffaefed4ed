"""astro_classifier.spark on a real local Spark (``local[2]``): the rows equal classify()'s.

One Spark session serves every test here (session start is 5-10 s; the first task of a
Python worker loads the model once). The ZTF data lake is built in a temporary folder from
the shared real alerts (fink-v4.02, 561 alerts, cutouts kept, so projection has something
to leave out); the Rubin one is the shared Fink Parquet file. Spark needs pyspark (the
``spark`` extra) and Java 17 or 21 (pyspark 4 fails on Java 25): outside CI the tests skip
with the reason when either is missing; in CI (``CI=true``) that is an error (``.ci/run``
installs Java 17).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import fastavro
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from astro_classifier.cli.app import app
from astro_classifier.formats.registry import read_light_curves
from astro_classifier.inference.arrow_batches import cached_model
from astro_classifier.inference.classify import classify
from astro_classifier.inference.model import resolve_model_path

IN_CI = os.environ.get("CI", "").lower() == "true"


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(reason)
    pytest.skip(reason)


def _java_major(java: Path) -> int | None:
    try:
        out = subprocess.run(
            [str(java), "-version"], capture_output=True, text=True, timeout=30
        ).stderr
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r'version "(\d+)', out)
    return int(found.group(1)) if found else None


def java_home() -> Path | None:
    """A Java 17 or 21 home: $JAVA_HOME if it is one, else one under /usr/lib/jvm (pyspark
    4 needs 17+ and fails on 25), else the ``java`` on PATH."""
    candidates = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(Path(os.environ["JAVA_HOME"]))
    candidates += sorted(Path("/usr/lib/jvm").glob("*17*")) + sorted(
        Path("/usr/lib/jvm").glob("*21*")
    )
    on_path = shutil.which("java")
    if on_path:
        candidates.append(Path(on_path).resolve().parent.parent)
    for home in candidates:
        if _java_major(home / "bin" / "java") in (17, 21):
            return home
    return None


@pytest.fixture(scope="session")
def spark():
    """One local[2] session for every Spark test: no UI, two shuffle partitions."""
    try:
        import pyspark  # noqa: F401
        from pyspark.sql import SparkSession
    except ImportError as exc:
        _unavailable(f"pyspark is not installed ({exc}); pip install -e '.[spark]'")
    home = java_home()
    if home is None:
        _unavailable("no Java 17 or 21 found (JAVA_HOME, /usr/lib/jvm, PATH); pyspark 4 needs one")
    os.environ["JAVA_HOME"] = str(home)
    session = (
        SparkSession.builder.master("local[2]")
        .appName("astroclf-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.driver.memory", "1g")
        .config("spark.sql.maxMetadataStringLength", "100000")  # whole ReadSchema in plans
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


CUTOUTS = ("cutoutScience", "cutoutTemplate", "cutoutDifference")


@pytest.fixture(scope="session")
def ztf_lake(shared_data, tmp_path_factory) -> Path:
    """A Parquet folder of the 561 real fink-v4.02 alerts, one row each, cutouts kept, in
    two files (a data lake's layout)."""
    records = []
    for path in sorted((shared_data / "alerts/ztf/fink-v4.02").glob("*.avro")):
        with path.open("rb") as stream:
            records += list(fastavro.reader(stream))
    table = pa.Table.from_pylist(records)
    folder = tmp_path_factory.mktemp("lake") / "ztf"
    folder.mkdir()
    half = table.num_rows // 2
    pq.write_table(table.slice(0, half), folder / "part-0.parquet")
    pq.write_table(table.slice(half), folder / "part-1.parquet")
    return folder


@pytest.fixture(scope="session")
def rubin_lake(shared_data) -> Path:
    return shared_data / "alerts/lsst/fink-v10.0.parquet"


def _reference(paths: list[Path], model: str) -> pa.Table:
    """classify() of the same alerts, read by the registry: what every row must equal."""
    files = [
        p for path in paths for p in (sorted(path.glob("*.parquet")) if path.is_dir() else [path])
    ]
    return classify(read_light_curves(files), cached_model(model), n_jobs=1).to_arrow()


def assert_same_rows(got: pa.Table, expected: pa.Table) -> None:
    """Same alerts, same classes, probabilities within 1e-6 and OOD scores within 1e-5 relative
    (float32 sums in another batch shape; row order may differ)."""
    assert got.schema == expected.schema
    got, expected = (t.sort_by([("alert_id", "ascending")]) for t in (got, expected))
    assert got.column("alert_id").to_pylist() == expected.column("alert_id").to_pylist()
    for name in expected.column_names:
        a, b = got.column(name), expected.column(name)
        if pa.types.is_floating(b.type):
            np.testing.assert_allclose(
                a.to_numpy(zero_copy_only=False),
                b.to_numpy(zero_copy_only=False),
                rtol=1e-5,
                atol=1e-6,
            )
        else:
            assert a.to_pylist() == b.to_pylist(), name


def _collect(df) -> pa.Table:
    return df.toArrow()


def test_ztf_lake_gives_the_rows_of_classify(spark, ztf_lake):
    from astro_classifier.spark import classify_dataframe, split_errors

    df = spark.read.parquet(str(ztf_lake))
    classified, errors = split_errors(classify_dataframe(df, "atat-ztf"))
    assert errors.count() == 0
    assert_same_rows(_collect(classified), _reference([ztf_lake], "atat-ztf"))


def test_rubin_lake_gives_the_rows_of_classify(spark, rubin_lake):
    from astro_classifier.spark import classify_dataframe, split_errors

    classified, errors = split_errors(
        classify_dataframe(spark.read.parquet(str(rubin_lake)), "atat-lsst")
    )
    assert errors.count() == 0
    assert_same_rows(_collect(classified), _reference([rubin_lake], "atat-lsst"))


def test_many_partitions_and_small_arrow_batches(spark, ztf_lake):
    from astro_classifier.spark import classify_dataframe, split_errors

    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "37")
    try:
        df = spark.read.parquet(str(ztf_lake)).repartition(5)
        classified, _ = split_errors(classify_dataframe(df, "atat-ztf"))
        assert_same_rows(_collect(classified), _reference([ztf_lake], "atat-ztf"))
    finally:
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")


def test_projection_reads_only_what_the_reader_uses_and_changes_nothing(spark, ztf_lake):
    from astro_classifier.spark import classify_dataframe

    df = spark.read.parquet(str(ztf_lake))
    projected = classify_dataframe(df, "atat-ztf")
    plan = projected._jdf.queryExecution().executedPlan().toString()
    read = re.search(r"ReadSchema: (struct<.*)", plan).group(1)
    assert "cutout" not in read and "candid" in read and "magpsf" in read
    assert "rb:" not in read and "drb" not in read  # unused candidate fields are not read
    whole = classify_dataframe(df, "atat-ztf", project=False)
    assert_same_rows(_collect(projected), _collect(whole))


def test_empty_input_gives_an_empty_result_with_the_schema(spark, ztf_lake):
    from astro_classifier.spark import classify_dataframe

    result = classify_dataframe(spark.read.parquet(str(ztf_lake)).limit(0), "atat-ztf")
    table = _collect(result)
    assert table.num_rows == 0
    assert "prob_SNIa" in table.column_names and table.column_names[-1] == "error"


@pytest.fixture(scope="session")
def lake_with_bad_rows(ztf_lake, tmp_path_factory) -> tuple[Path, str, str]:
    """The lake's first file with two broken alerts: one whose candidate has fid 7 (no
    such ZTF filter: the reader refuses it), one with no point at all (a null jd
    everywhere is refused too; here: an empty history and a candidate with neither
    magnitude nor limit, which classify() skips)."""
    table = pq.read_table(ztf_lake / "part-0.parquet")
    rows = table.to_pylist()
    bad, empty = rows[3], rows[10]
    bad["candidate"]["fid"] = 7
    empty["candidate"]["magpsf"] = None
    empty["candidate"]["diffmaglim"] = None
    empty["prv_candidates"] = []
    folder = tmp_path_factory.mktemp("bad-lake")
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), folder / "part-0.parquet")
    return folder, bad["candid"], empty["candid"]


def test_a_malformed_row_goes_to_the_errors_and_the_rest_is_classified(
    spark, lake_with_bad_rows, tmp_path
):
    from astro_classifier.spark import classify_dataframe, write_parquet

    folder, bad, empty = lake_with_bad_rows
    df = spark.read.parquet(str(folder)).repartition(2)
    counts = write_parquet(classify_dataframe(df, "atat-ztf"), str(tmp_path / "out"))
    n = pq.read_metadata(folder / "part-0.parquet").num_rows
    assert (counts.classified, counts.errors) == (n - 2, {"decode": 1, "skipped": 1})
    assert sum(counts.classes.values()) == n - 2
    errors = pq.read_table(tmp_path / "out_errors").to_pylist()
    by_alert = {row["alert_id"]: row for row in errors}
    assert by_alert[str(bad)]["stage"] == "decode"
    assert "fid=7" in by_alert[str(bad)]["reason"] and by_alert[str(bad)]["object_id"]
    assert json.loads(by_alert[str(bad)]["row"])["candidate"]["fid"] == 7
    assert by_alert[str(empty)]["stage"] == "skipped"
    classified = pq.read_table(tmp_path / "out")
    assert classified.num_rows == n - 2 and "error" not in classified.column_names


def test_strict_fails_the_job_on_a_malformed_row(spark, lake_with_bad_rows):
    from astro_classifier.spark import classify_dataframe

    folder, _, _ = lake_with_bad_rows
    with pytest.raises(Exception, match="fid=7"):
        classify_dataframe(spark.read.parquet(str(folder)), "atat-ztf", strict=True).count()


def test_a_users_model_travels_with_sparkfiles(spark, rubin_lake, tmp_path):
    from astro_classifier.spark import classify_dataframe, split_errors

    mine = tmp_path / "my-lsst-model.onnx"
    shutil.copy(resolve_model_path("atat-lsst"), mine)
    classified, _ = split_errors(classify_dataframe(spark.read.parquet(str(rubin_lake)), str(mine)))
    assert_same_rows(_collect(classified), _reference([rubin_lake], "atat-lsst"))


def test_cli_classify_spark_writes_the_classified_folder(spark, ztf_lake, tmp_path):
    out = tmp_path / "classified"
    result = CliRunner().invoke(
        app,
        [
            "classify",
            str(ztf_lake),
            "-m",
            "atat-ztf",
            "-o",
            str(out),
            "--spark",
            "--master",
            "local[2]",
        ],
    )
    assert result.exit_code == 0, result.output
    assert_same_rows(pq.read_table(out), _reference([ztf_lake], "atat-ztf"))
    assert "561 of 561" in result.output


def test_read_alerts_reads_only_the_readers_fields_and_classifies_the_same(spark, ztf_lake):
    from astro_classifier.spark import classify_dataframe, read_alerts, split_errors

    df = read_alerts(spark, str(ztf_lake))
    assert df.columns == ["candid", "objectId", "candidate", "prv_candidates"]
    assert "rb" not in df.schema["candidate"].dataType.fieldNames()
    result = classify_dataframe(df, "atat-ztf")
    plan = result._jdf.queryExecution().executedPlan().toString()
    assert "transform" not in plan  # already projected: no second projection
    classified, _ = split_errors(result)
    assert_same_rows(_collect(classified), _reference([ztf_lake], "atat-ztf"))

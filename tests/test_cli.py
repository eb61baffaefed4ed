"""The `astroclf` command line through typer's CliRunner (in process, no subprocess).

Covers help and version, `classify` on the committed PLAsTiCC example and on every real
alert format in shared data (ZTF Avro, Rubin Avro containers, Rubin wire format, Rubin
Parquet), `info`, `models`, `evaluate`, and the errors for a missing CUDA provider or an
unknown model. Bad input files are tested in ``test_bad_input.py``.

Click >= 8.2 (and typer's own testing module) capture stderr apart from stdout and also
mix both into ``result.output``; older Click raises ``ValueError`` on ``result.stderr``
unless ``mix_stderr=False``. ``_stderr`` handles both. The progress bar, tables and
errors go to stderr (rich console); ``info --json`` goes to stdout.
"""

from __future__ import annotations

import io
import json
import re
import struct
from collections import Counter
from pathlib import Path

import fastavro
import numpy as np
import onnxruntime as ort
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import typer.main
from fastavro.schema import load_schema
from typer.testing import CliRunner

from astro_classifier import __version__
from astro_classifier.cli.app import app
from astro_classifier.inference.model import ModelMetadata, read_metadata, shipped_models

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_DIR = PROJECT_ROOT / "examples" / "plasticc"
EXAMPLE_LC = EXAMPLE_DIR / "lightcurves.csv"
EXAMPLE_META = EXAMPLE_DIR / "metadata.csv"
N_EXAMPLE_OBJECTS = 42
COMMANDS = ("classify", "evaluate", "info", "models", "train", "export")
SHIPPED = ("atat-lsst", "atat-ztf")
CONTRACT_HEAD = ["object_id", "alert_id", "model", "model_version", "class", "probability"]
WIRE_HEADER = struct.Struct(">bI")  # magic byte 0, big-endian schema id

# A fixed, wide console: rich sizes its output from the terminal (or COLUMNS), so without
# this, table cells and help text would be cut or wrapped differently on every machine.
runner = CliRunner(env={"COLUMNS": "240"})


def invoke(*args: str | Path) -> object:
    return runner.invoke(app, [str(a) for a in args])


def _stderr(result) -> str:
    try:
        return result.stderr
    except ValueError:  # Click < 8.2 with mixed streams: stderr is inside output
        return result.output


def _flat(text: str) -> str:
    """Text with rich's box characters removed and whitespace collapsed."""
    return " ".join(re.sub(r"[│┃╭╮╰╯─━┏┓┗┛┡┩┠┨┳┻╇╈┼┬┴┌┐└┘├┤╞╡]", " ", text).split())


def _ok(result) -> None:
    assert result.exit_code == 0, f"exit {result.exit_code}: {result.output}\n{result.exception!r}"


def _labels(model: str) -> list[str]:
    return read_metadata(model).labels


def _read_contract(path: Path, model: str) -> dict[str, list]:
    """Read a classify output, check the output contract, return its columns."""
    meta: ModelMetadata = read_metadata(model)
    table = pq.read_table(path)
    assert table.column_names == CONTRACT_HEAD + [f"prob_{label}" for label in meta.labels] + [
        "broad_class", "prob_transient", "prob_stochastic", "prob_periodic", "ood_score", "abstain"
    ]  # fmt: skip
    proba = np.stack([table.column(f"prob_{label}").to_numpy() for label in meta.labels], axis=1)
    assert np.isfinite(proba).all()
    assert ((proba >= 0) & (proba <= 1)).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(table.column("probability").to_numpy(), proba.max(axis=1))
    classes = table.column("class").to_pylist()
    assert classes == [meta.labels[j] for j in proba.argmax(axis=1)]
    assert set(table.column("model").to_pylist()) <= {meta.name}
    assert set(table.column("model_version").to_pylist()) <= {meta.version}
    assert table.column("object_id").null_count == 0
    return table.to_pydict()


# -- help and version ---------------------------------------------------------------------
def test_root_help_lists_every_command() -> None:
    result = invoke("--help")
    _ok(result)
    for command in COMMANDS:
        assert command in result.output


def test_no_arguments_shows_help() -> None:
    result = invoke()
    assert "Usage" in result.output
    for command in COMMANDS:
        assert command in result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help_explains_every_option(command: str) -> None:
    result = invoke(command, "--help")
    _ok(result)
    text = _flat(result.output)
    assert f"astroclf {command}" in text
    click_command = typer.main.get_command(app).commands[command]
    docstring = (click_command.help or "").strip()
    assert docstring, f"{command} has no help text"
    assert " ".join(docstring.split()[:5]) in text
    for param in click_command.params:
        long_names = [o for o in param.opts if o.startswith("--")]
        assert any(name in text for name in long_names) or param.name in text, param.name
        help_text = " ".join((param.help or "").split())
        assert help_text, f"{command}: {param.name} has no help"
        assert " ".join(help_text.split()[:4]) in text, f"{command}: help of {param.name}"


def test_help_is_prose_that_the_terminal_wraps() -> None:
    """Docstrings are wrapped at the source's width; the help joins each paragraph's lines
    (so rich wraps them at the terminal's width, never mid-sentence) and keeps an indented
    example block line by line."""
    from astro_classifier.cli.common import prose

    def documented() -> None:
        """First line
        goes on.

        Second paragraph
        goes on too:

          EXAMPLE=1   kept
          EXAMPLE=2   as is
        """

    assert prose(documented) == (
        "First line goes on.\n\nSecond paragraph goes on too:\n\n"
        "  EXAMPLE=1   kept\n  EXAMPLE=2   as is"
    )
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        assert command.help == prose(command.callback), name
        for paragraph in command.help.split("\n\n"):
            assert "\n" not in paragraph or paragraph.startswith(" "), (name, paragraph)
    wide = CliRunner(env={"COLUMNS": "400"}).invoke(app, ["stream", "--help"])
    _ok(wide)
    assert (
        "Logs: one JSON object per line on stderr. SIGTERM or Ctrl-C finishes the batches in hand"
        in (wide.output)
    )


def test_version() -> None:
    result = invoke("--version")
    _ok(result)
    assert result.stdout.strip() == f"astroclf {__version__}"


def test_the_installed_distribution_has_the_package_version() -> None:
    """pyproject.toml reads the version from astro_classifier.__version__ (one source)."""
    import importlib.metadata

    try:
        installed = importlib.metadata.version("astro-classifier")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("astro-classifier is not installed (run from a source tree)")
    assert installed == __version__


# -- models and info ----------------------------------------------------------------------
def test_models_lists_both_shipped_models() -> None:
    assert set(SHIPPED) <= set(shipped_models())
    result = invoke("models")
    _ok(result)
    text = _flat(_stderr(result) + result.stdout)
    for name in SHIPPED:
        meta = read_metadata(name)
        assert re.search(rf"{name} {re.escape(meta.version)} {' '.join(meta.bands)}", text), name


@pytest.mark.parametrize("model", SHIPPED)
def test_info_prints_labels_and_bands(model: str) -> None:
    meta = read_metadata(model)
    result = invoke("info", model)
    _ok(result)
    text = _flat(_stderr(result) + result.stdout)
    assert f"{meta.name} {meta.version}" in text
    assert " ".join(meta.bands) in text
    assert f"{len(meta.labels)}:" in text
    for label in meta.labels:
        assert label in text
    assert "holdout metrics" in text
    spec = meta.preprocessing
    assert ("one point per band and night" in text) == spec.nightly_bin
    for name in spec.masked_features:
        assert name in text


@pytest.mark.parametrize(
    ("model", "bands"), [("atat-lsst", list("ugrizy")), ("atat-ztf", list("gri"))]
)
def test_info_json_is_the_full_metadata(model: str, bands: list[str]) -> None:
    result = invoke("info", model, "--json")
    _ok(result)
    data = json.loads(result.stdout)  # stdout holds the JSON only
    assert data["name"] == model
    assert data["bands"] == bands
    assert data["labels"] == _labels(model)
    assert len(data["labels"]) == {"atat-lsst": 14, "atat-ztf": 10}[model]
    assert data["labels"] == sorted(data["labels"])
    assert [i["name"] for i in data["inputs"]] == [
        "flux",
        "flux_err",
        "time",
        "band",
        "mask",
        "tabular",
    ]
    for key in ("version", "architecture", "feature_names", "preprocessing", "metrics"):
        assert key in data
    assert ModelMetadata.model_validate(data) == read_metadata(model)


# -- classify -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def example_output(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("classify") / "example.parquet"
    result = invoke("classify", EXAMPLE_LC, "--metadata", EXAMPLE_META, "-o", out)
    return out, result


def test_classify_example_writes_the_contract(example_output: tuple[Path, object]) -> None:
    out, result = example_output
    _ok(result)
    columns = _read_contract(out, "atat-lsst")
    assert len(columns["object_id"]) == N_EXAMPLE_OBJECTS
    objects = pacsv.read_csv(EXAMPLE_META).column("object_id").to_pylist()
    assert sorted(columns["object_id"]) == sorted(str(o) for o in objects)
    assert len(set(columns["object_id"])) == N_EXAMPLE_OBJECTS  # one row per object
    assert columns["alert_id"] == [None] * N_EXAMPLE_OBJECTS  # batch input: no alerts
    assert set(columns["model"]) == {"atat-lsst"}
    # the summary names the counts and where the table went
    summary = _flat(_stderr(result))
    assert f"{N_EXAMPLE_OBJECTS} of {N_EXAMPLE_OBJECTS} objects classified" in summary
    assert out.name in summary
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary file left


def test_classify_explicit_format_gives_the_same_table(
    example_output: tuple[Path, object], tmp_path: Path
) -> None:
    detected, _ = example_output
    out = tmp_path / "explicit.parquet"
    result = invoke(
        "classify", EXAMPLE_LC, "--format", "plasticc", "--metadata", EXAMPLE_META, "-o", out
    )
    _ok(result)
    assert pq.read_table(out).equals(pq.read_table(detected))


def _ztf_expected(files: list[Path]) -> Counter:
    pairs: Counter = Counter()
    for path in files:
        with path.open("rb") as stream:
            for record in fastavro.reader(stream):
                pairs[(record["objectId"], str(record["candid"]))] += 1
    return pairs


def _rubin_alert_id(record: dict) -> str:
    """The triggering diaSourceId: top level from schema v8, inside diaSource before."""
    return str(record.get("diaSourceId") or record["diaSource"]["diaSourceId"])


def _assert_alerts(out: Path, model: str, expected_alert_ids: Counter) -> None:
    columns = _read_contract(out, model)
    assert len(columns["alert_id"]) == sum(expected_alert_ids.values())
    assert Counter(columns["alert_id"]) == expected_alert_ids


def test_classify_every_ztf_alert_format_detected(shared_data: Path, tmp_path: Path) -> None:
    files = sorted((shared_data / "alerts" / "ztf").rglob("*.avro"))
    assert len(files) >= 600  # ztf-avro-alert, fink-v3.3, fink-v4.02
    expected = _ztf_expected(files)
    out = tmp_path / "ztf.parquet"
    result = invoke("classify", "--model", "atat-ztf", *files, "-o", out)
    _ok(result)
    _assert_alerts(out, "atat-ztf", Counter({candid: n for (_, candid), n in expected.items()}))
    columns = pq.read_table(out, columns=["object_id", "alert_id"]).to_pydict()
    assert Counter(zip(columns["object_id"], columns["alert_id"], strict=True)) == expected
    assert set(pq.read_table(out).column("model").to_pylist()) == {"atat-ztf"}


def test_classify_ztf_with_explicit_format(shared_data: Path, tmp_path: Path) -> None:
    files = sorted((shared_data / "alerts" / "ztf" / "ztf-avro-alert").glob("*.avro"))
    out = tmp_path / "ztf.parquet"
    result = invoke("classify", "-m", "atat-ztf", "-f", "ztf-avro", *files, "-o", out)
    _ok(result)
    expected = _ztf_expected(files)
    _assert_alerts(out, "atat-ztf", Counter({candid: n for (_, candid), n in expected.items()}))


@pytest.mark.parametrize(
    "format_option", [[], ["--format", "rubin-avro"]], ids=["detected", "explicit"]
)
def test_classify_rubin_avro_containers(
    shared_data: Path, tmp_path: Path, format_option: list[str]
) -> None:
    alerts = shared_data / "alerts"
    files = sorted((alerts / "lsst" / "fink-v7.4").glob("*.avro"))
    files += sorted((alerts / "elasticc" / "v0.9").glob("*.avro"))
    assert len(files) == 182
    expected: Counter = Counter()
    for path in files:
        with path.open("rb") as stream:
            expected.update(_rubin_alert_id(r) for r in fastavro.reader(stream))
    out = tmp_path / "rubin.parquet"
    result = invoke("classify", *format_option, *files, "-o", out)
    _ok(result)
    _assert_alerts(out, "atat-lsst", expected)


@pytest.mark.parametrize(
    "format_option", [[], ["--format", "rubin-wire"]], ids=["detected", "explicit"]
)
def test_classify_rubin_wire_format(
    shared_data: Path, tmp_path: Path, format_option: list[str]
) -> None:
    schema_dir = shared_data / "alerts" / "lsst" / "schema"
    files = sorted((shared_data / "alerts" / "lsst" / "wire-v7.4").iterdir())
    assert len(files) == 5
    expected: Counter = Counter()
    for path in files:  # decode independently: header, then the schemaless body
        data = path.read_bytes()
        magic, schema_id = WIRE_HEADER.unpack_from(data)
        assert magic == 0
        major, minor = divmod(schema_id, 100)
        schema = load_schema(
            schema_dir / str(major) / str(minor) / f"lsst.v{major}_{minor}.alert.avsc"
        )
        expected[_rubin_alert_id(fastavro.schemaless_reader(io.BytesIO(data[5:]), schema))] += 1
    out = tmp_path / "wire.parquet"
    result = invoke("classify", *format_option, *files, "--schema-dir", schema_dir, "-o", out)
    _ok(result)
    _assert_alerts(out, "atat-lsst", expected)


def test_classify_rubin_parquet(shared_data: Path, tmp_path: Path) -> None:
    path = shared_data / "alerts" / "lsst" / "fink-v10.0.parquet"
    expected = Counter(
        str(i) for i in pq.read_table(path, columns=["diaSourceId"]).column(0).to_pylist()
    )
    assert sum(expected.values()) == 25
    out = tmp_path / "rubin.parquet"
    result = invoke("classify", path, "-o", out)
    _ok(result)
    _assert_alerts(out, "atat-lsst", expected)


# -- evaluate -----------------------------------------------------------------------------
def test_evaluate_example_with_truncation(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = invoke(
        "evaluate",
        "atat-lsst",
        EXAMPLE_LC,
        "--metadata",
        EXAMPLE_META,
        "--truncate-days",
        "8,32",
        "-o",
        out,
    )
    _ok(result)
    assert sorted(p.name for p in out.iterdir()) == [
        "confusion_matrix.png",
        "metrics.json",
        "metrics_vs_truncation.png",
        "reliability.png",
    ]
    for png in ("confusion_matrix.png", "metrics_vs_truncation.png", "reliability.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((out / "metrics.json").read_text())
    whole = metrics["whole"]
    assert whole["n_objects"] == N_EXAMPLE_OBJECTS
    assert set(metrics["by_truncation"]) == {"8.0", "32.0"}
    for m in [whole, *metrics["by_truncation"].values()]:
        assert 0 <= m["accuracy"] <= 1
        assert 0 <= m["macro_f1"] <= 1
    text = _flat(_stderr(result) + result.stdout)
    assert "accuracy" in text
    assert "macro F1" in text
    # the printed table holds the numbers of metrics.json
    assert re.search(
        rf"whole {N_EXAMPLE_OBJECTS} {whole['accuracy']:.3f} {whole['macro_f1']:.3f}", text
    )
    for days in ("8 days", "32 days"):
        assert days in text


# -- provider and model errors ------------------------------------------------------------
@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(),
    reason="this onnxruntime has CUDA; the error path is for CPU-only installs",
)
@pytest.mark.parametrize("command", ["classify", "evaluate"])
def test_provider_cuda_without_cuda_is_a_clear_error(command: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    if command == "classify":
        args = ["classify", EXAMPLE_LC, "-o", out / "x.parquet", "--provider", "cuda"]
    else:
        args = ["evaluate", "atat-lsst", EXAMPLE_LC, "--metadata", EXAMPLE_META, "-o", out]
        args += ["--provider", "cuda"]
    result = invoke(*args)
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)  # no traceback: a handled error
    text = "".join(_stderr(result).splitlines())
    assert text.startswith("error:")
    assert "'cuda'" in text
    assert "CUDAExecutionProvider" in text
    assert "onnxruntime-gpu" in text
    assert not out.exists()


@pytest.mark.parametrize("command", ["classify", "evaluate", "info"])
def test_unknown_model_lists_the_shipped_models(command: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = {
        "classify": ["classify", EXAMPLE_LC, "--model", "nonexistent", "-o", out / "x.parquet"],
        "evaluate": ["evaluate", "nonexistent", EXAMPLE_LC, "--metadata", EXAMPLE_META, "-o", out],
        "info": ["info", "nonexistent"],
    }[command]
    result = invoke(*args)
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    text = "".join(_stderr(result).splitlines())
    assert text.startswith("error:")
    assert "'nonexistent'" in text
    for name in SHIPPED:
        assert name in text
    assert not out.exists()

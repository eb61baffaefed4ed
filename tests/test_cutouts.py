"""Alert cutouts -> normalised arrays (astro_classifier.data.cutouts), on real alerts.

Pixel values are checked against astropy reading the same bytes independently; failures
(missing, corrupt gzip, not FITS, wrong shape, all-NaN) must be counted by reason and keep
their alert's row; the light-curve readers must not need the cutouts at all.
"""

from __future__ import annotations

import gzip
import io
import subprocess
import sys
from pathlib import Path

import fastavro
import numpy as np
import pyarrow.parquet as pq
import pytest
from astropy.io import fits

from astro_classifier.core.cutouts import (
    ALL_NAN,
    CORRUPT_GZIP,
    MISSING,
    NOT_FITS,
    STAMPS,
    WRONG_SHAPE,
)
from astro_classifier.core.errors import InputError
from astro_classifier.formats import stamps as cutouts
from astro_classifier.formats import ztf as ztf_reader
from astro_classifier.formats.registry import decode_cutouts, read_cutouts
from astro_classifier.formats.rubin import SchemaDirectory
from astro_classifier.formats.stamps import center_crop_or_pad, normalise_stamp
from astro_classifier.formats.ztf import ztf_cutouts

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _records(path: Path) -> tuple[dict, list[dict]]:
    with path.open("rb") as stream:
        reader = fastavro.reader(stream)
        return reader.writer_schema, list(reader)


def _fits_bytes(image: np.ndarray, gz: bool = True) -> bytes:
    buf = io.BytesIO()
    fits.PrimaryHDU(image).writeto(buf)
    return gzip.compress(buf.getvalue()) if gz else buf.getvalue()


def _expected(image: np.ndarray) -> np.ndarray:
    """The documented normalisation, written out independently."""
    good = np.isfinite(image) & (np.abs(image) < 1e30)
    med = np.median(image[good].astype(np.float64))
    sigma = 1.4826 * np.median(np.abs(image[good] - med))
    return np.where(good, np.arcsinh((image - med) / sigma), 0.0)


# -- real alerts ------------------------------------------------------------------------------
def test_ztf_cutouts_match_astropy_reading_the_same_bytes(shared_data):
    path = sorted((shared_data / "alerts/ztf/ztf-avro-alert").glob("*.avro"))[0]
    _, records = _records(path)
    batch = decode_cutouts(path.read_bytes(), "ztf-avro", str(path))
    assert len(batch) == len(records) and batch.ok.all(), batch.failure
    assert batch.images.shape == (len(records), 3, 63, 63)
    assert batch.images.dtype == np.float32 and batch.valid.dtype == bool
    assert list(batch.object_id) == [r["objectId"] for r in records]
    for c, name in enumerate(STAMPS):
        stamp = records[0][name]
        with fits.open(io.BytesIO(gzip.decompress(stamp["stampData"]))) as hdul:
            header, raw = hdul[0].header, hdul[0].data.astype(np.float64)
        # header and orientation: rows are NAXIS2, columns NAXIS1, nothing flipped
        assert tuple(batch.shape[0, c]) == (header["NAXIS2"], header["NAXIS1"]) == (63, 63)
        expected = _expected(raw)
        for row, col in ((31, 31), (0, 0), (0, 62), (62, 0), (10, 50)):
            assert batch.images[0, c, row, col] == pytest.approx(expected[row, col], abs=1e-5)
    assert "sci" in records[0]["cutoutScience"]["fileName"]
    # the transient sits at the centre of the difference stamp
    diff = np.abs(batch.images[0, 2])
    row, col = np.unravel_index(np.argmax(diff), diff.shape)
    assert abs(row - 31) <= 3 and abs(col - 31) <= 3, (row, col)


def test_ztf_labels_come_from_the_candidate(shared_data):
    path = sorted((shared_data / "alerts/ztf/fink-v3.3").glob("*.avro"))[0]
    _, (record,) = _records(path)
    batch = decode_cutouts(path.read_bytes(), "ztf-avro", str(path))
    cand = record["candidate"]
    for name in ("ssdistnr", "sgscore1", "distpsnr1", "drb"):
        assert batch.fields[name][0] == pytest.approx(cand[name])
    labels = batch.labels()
    assert labels["solar_system"][0] == float(0 <= cand["ssdistnr"] < 5)
    assert labels["real"][0] == float(cand["drb"] > 0.5)
    point = cand["sgscore1"] > 0.5 and 0 <= cand["distpsnr1"] < 1
    assert labels["point_source"][0] == float(point)


def test_rubin_cutouts_are_centred_in_the_63_pixel_frame(shared_data):
    folder = shared_data / "alerts/lsst/fink-v7.4"
    sizes = {}
    for path in sorted(folder.glob("*.avro")):
        batch = decode_cutouts(path.read_bytes(), "rubin-avro", str(path))
        assert batch.ok.all() and (batch.survey == "rubin").all()
        sizes.setdefault(int(batch.shape[0, 0, 0]), (path, batch))
    assert {30, 88} <= set(sizes), sorted(sizes)  # a padded and a cropped stamp
    path, small = sizes[30]
    _, (record,) = _records(path)
    with fits.open(io.BytesIO(record["cutoutScience"])) as hdul:
        raw = hdul[0].data.astype(np.float64)
    assert raw.shape == (30, 30)
    # input pixel (14, 14) -> output (31, 31); a 30x30 block of valid pixels at 17..46
    expected = _expected(raw)
    assert small.images[0, 0, 31, 31] == pytest.approx(expected[14, 14], abs=1e-5)
    assert small.images[0, 0, 17, 17] == pytest.approx(expected[0, 0], abs=1e-5)
    valid = small.valid[0, 0]
    assert (
        valid[17:47, 17:47].sum() == np.isfinite(raw).sum()
        and valid.sum() == valid[17:47, 17:47].sum()
    )
    assert (small.images[0, 0][~valid] == 0).all()
    _, big = sizes[88]
    assert big.valid[0, 0].all()  # cropped: every output pixel is an input pixel


def test_rubin_wire_and_parquet_cutouts(shared_data):
    schemas = SchemaDirectory(shared_data / "alerts/lsst/schema")
    wire = sorted((shared_data / "alerts/lsst/wire-v7.4").glob("*.avro"))[0]
    batch = decode_cutouts(wire.read_bytes(), "rubin-wire", str(wire), schemas)
    assert len(batch) == 1 and batch.ok.all()
    parquet = shared_data / "alerts/lsst/fink-v10.0.parquet"
    batch = decode_cutouts(parquet.read_bytes(), "rubin-parquet", str(parquet))
    table = pq.read_table(parquet, columns=["diaSourceId"])
    assert len(batch) == table.num_rows and batch.ok.all()
    assert list(batch.alert_id) == [str(v) for v in table.column("diaSourceId").to_pylist()]


def test_read_cutouts_counts_what_it_cannot_use(shared_data):
    batch = read_cutouts(shared_data / "alerts/lsst")
    # schema files and JSON samples are skipped files; the schema sample alerts have no cutouts
    assert batch.skipped_files.get("not an alert file", 0) > 0
    samples = np.array(["sample_data" in s for s in batch.source])
    assert samples.sum() > 0 and not batch.ok[samples].any()
    assert batch.failures[MISSING] == 3 * samples.sum()
    assert all(MISSING in f for f in batch.failure[samples])
    wire = np.array(["wire-v7.4" in s for s in batch.source])
    assert wire.sum() == 5 and batch.ok[wire].all()  # the schema folder was found
    assert batch.ok.sum() == 100 + 5 + 25


# -- failures ---------------------------------------------------------------------------------
def test_every_failure_is_counted_by_reason_and_keeps_its_row(shared_data):
    path = sorted((shared_data / "alerts/ztf/fink-v3.3").glob("*.avro"))[0]
    _, (record,) = _records(path)
    good = record["cutoutScience"]["stampData"]
    nan_image = np.full((63, 63), np.nan, np.float32)
    bad = {
        "missing": None,
        "corrupt gzip": b"\x1f\x8b\x08\x00" + b"not really deflate data" * 4,
        "truncated gzip": good[: len(good) // 2],
        "not fits": gzip.compress(b"this is not a FITS file"),
        "1-d": _fits_bytes(np.zeros(63, np.float32)),
        "tiny": _fits_bytes(np.zeros((4, 4), np.float32)),
        "all-nan": _fits_bytes(nan_image),
    }
    records = [record]
    for value in bad.values():
        broken = dict(record)
        broken["cutoutTemplate"] = None if value is None else {"fileName": "x", "stampData": value}
        records.append(broken)
    batch = ztf_cutouts(records, "test")
    assert len(batch) == 1 + len(bad)
    assert list(batch.ok) == [True] + [False] * len(bad)
    assert batch.failures == {
        MISSING: 1,
        CORRUPT_GZIP: 2,
        NOT_FITS: 1,
        WRONG_SHAPE: 2,
        ALL_NAN: 1,
    }
    assert all(f.startswith("cutoutTemplate: ") for f in batch.failure[1:])
    assert not batch.images[1:].any() and not batch.valid[1:].any()


def test_light_curves_never_decode_cutouts(shared_data, tmp_path):
    """Corrupt cutouts do not disturb the light-curve reader: it skips the bytes."""
    assert not {f if isinstance(f, str) else f[0] for f in ztf_reader.AVRO_FIELDS} & set(STAMPS)
    path = sorted((shared_data / "alerts/ztf/fink-v3.3").glob("*.avro"))[0]
    schema, records = _records(path)
    for r in records:
        for name in STAMPS:
            r[name] = {"fileName": "x", "stampData": b"\x1f\x8bgarbage"}
    broken = tmp_path / "broken.avro"
    with broken.open("wb") as stream:
        fastavro.writer(stream, schema, records)
    original = ztf_reader.read_ztf_avro([path])
    again = ztf_reader.read_ztf_avro([broken])
    np.testing.assert_array_equal(original.flux, again.flux)
    batch = decode_cutouts(broken.read_bytes(), "ztf-avro", str(broken))
    assert batch.failures == {CORRUPT_GZIP: 3 * len(records)}


def test_bad_input_names_the_source():
    with pytest.raises(InputError, match="somewhere.avro.*Avro magic"):
        decode_cutouts(b"nonsense", "ztf-avro", "somewhere.avro")
    with pytest.raises(InputError, match="msg: format 'json' carries no cutouts"):
        decode_cutouts(b"{}", "json", "msg")
    with pytest.raises(InputError, match="not a directory"):
        read_cutouts(PROJECT_ROOT / "pyproject.toml")


def test_cutouts_import_without_torch():
    code = (
        "import sys\nsys.modules['torch'] = None\n"
        "import astro_classifier.formats.stamps as c\n"
        "import numpy as np\n"
        "img, ok = c.normalise_stamp(np.arange(64, dtype='f4').reshape(8, 8))\n"
        "print('torch' in sys.modules and sys.modules['torch'] is not None)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


# -- normalisation and geometry ---------------------------------------------------------------
def test_normalisation_is_robust_and_masks_bad_pixels():
    rng = np.random.default_rng(0)
    image = (100.0 + 5.0 * rng.standard_normal((63, 63))).astype(np.float32)
    image[31, 31] = 100.0 + 5.0 * 1000  # a 1000-sigma source
    image[0, :5] = np.nan
    image[1, 0] = -3.4028235e38  # ZTF's blank sentinel
    out, finite = normalise_stamp(image)
    assert out.dtype == np.float32
    assert not finite[0, :5].any() and not finite[1, 0] and finite.sum() == 63 * 63 - 6
    assert (out[~finite] == 0).all()
    background = out[finite & (np.abs(out) < 5)]
    assert abs(np.median(background)) < 0.05  # the median goes to 0
    assert 0.9 < np.sinh(background).std() < 1.1  # before asinh: the MAD scale ~ noise sigma
    assert out[31, 31] == pytest.approx(np.arcsinh(1000), rel=0.02)  # compressed, not clipped
    np.testing.assert_allclose(out, _expected(image), atol=1e-5)


def test_normalisation_edge_cases():
    const, ok = normalise_stamp(np.full((9, 9), 7.0, np.float32))
    assert ok.all() and not const.any()
    sparse = np.zeros((9, 9), np.float32)
    sparse[4, 4] = 10.0  # MAD = 0: the standard deviation scales it
    out, _ = normalise_stamp(sparse)
    assert out[4, 4] == pytest.approx(np.arcsinh(10.0 / sparse.std()), rel=1e-5)
    with pytest.raises(cutouts.StampError, match=ALL_NAN):
        normalise_stamp(np.full((9, 9), np.nan, np.float32))


@pytest.mark.parametrize("n", [30, 31, 63, 64, 88])
def test_center_crop_or_pad_keeps_the_centre(n):
    image = np.arange(n * n, dtype=np.float32).reshape(n, n) + 1
    out, inside = center_crop_or_pad(image, 63)
    assert out.shape == inside.shape == (63, 63)
    c = (n - 1) // 2
    assert out[31, 31] == image[c, c]
    assert out[31, 32] == image[c, c + 1] and out[32, 31] == image[c + 1, c]  # no flip
    assert inside.sum() == min(n, 63) ** 2
    assert (out[~inside] == 0).all() and (out[inside] > 0).all()

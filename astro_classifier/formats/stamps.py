"""Alert image stamps (ZTF and Rubin) -> the rows of a normalised :class:`CutoutBatch`.

Decoding cutouts is the costliest part of reading an alert, so the light-curve readers
(:mod:`astro_classifier.formats.ztf`, :mod:`astro_classifier.formats.rubin`) never touch
them: their Avro projections skip the cutout bytes. A format that carries stamps declares
how to read them (``InputFormat.stamps``: decode the alert again with a projection holding
the cutouts and the per-alert labels, then :func:`stamps_to_batch`); the format registry
calls it only when a model needs images. This module holds what every such format shares.
numpy + astropy only (it is on the inference path: no torch).

**Stamps.** Every alert carries three stamps, in this channel order: ``cutoutScience``,
``cutoutTemplate``, ``cutoutDifference`` (:data:`STAMPS`).

- ZTF: a record ``{fileName, stampData}`` whose ``stampData`` is a gzipped FITS file holding
  one 63x63 float32 image (smaller at CCD edges).
- Rubin (alert_packet v7.4 - v10, Fink re-publications): the bytes of an uncompressed FITS
  file whose primary HDU is the image (then ``UNCERT`` and ``PSFIMAGE`` HDUs, not read here).
  Sizes vary per alert (30x30 to 88x88 in the shared data; the template may differ from the
  science stamp of the same alert). ELAsTiCC and the schema sample alerts carry none.

Either compression is recognised from the bytes (gzip magic ``1f 8b``, else FITS ``SIMPLE``).
The image is the first HDU holding image data, read with astropy (``BSCALE``/``BZERO``
applied), in FITS storage order: ``array[row, col]`` with row 0 the first FITS row (y = 1,
the bottom of the image as ds9 shows it) and col 0 the first FITS column (x = 1); nothing is
flipped or transposed, so ``array.shape == (NAXIS2, NAXIS1)``.

**One geometry rule** (:func:`center_crop_or_pad`): each stamp is centre-cropped or
zero-padded to ``size x size`` pixels (default :data:`STAMP_SIZE` = 63, ZTF's native size):
the output pixel ``(size - 1) // 2`` is the input pixel ``(n - 1) // 2`` on each axis. No
resampling: ZTF pixels are 1.01", Rubin's 0.2", so a 30x30 Rubin stamp (6") sits in the
middle of the 63x63 frame with padding around it, and a model sees each survey at its own
scale (a model trained on one survey's stamps is not expected to transfer to the other's).

**One normalisation** (:func:`normalise_stamp`), per stamp, on its finite pixels:
``asinh((x - median) / scale)`` where ``scale = 1.4826 * MAD`` (the noise sigma of a
Gaussian background), falling back to the standard deviation when the MAD is 0 and to 1
for a constant stamp. The background is then ~N(0, 1) and bright sources are compressed
logarithmically (a 1000-sigma peak becomes 7.6). NaN/inf pixels, blank sentinels
(``|x| >= 1e30``: some ZTF templates fill masked pixels with -3.4e38, the float32 minimum)
and padding become 0 and are marked invalid in ``valid`` (the (N, 3, size, size) validity
mask).

**Failures are counted, never silently dropped** (:class:`CutoutBatch`, with the reasons
and the labels an alert provides): a stamp that cannot be used makes its alert
``ok = False``; :data:`WRONG_SHAPE` includes a side below :data:`MIN_SIDE` pixels.
"""

from __future__ import annotations

import gzip
import io
import warnings
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from astro_classifier.core.cutouts import (
    ALL_NAN,
    CORRUPT_GZIP,
    LABEL_FIELDS,
    MISSING,
    NOT_FITS,
    STAMP_SIZE,
    STAMPS,
    WRONG_SHAPE,
    CutoutBatch,
)
from astro_classifier.core.errors import InputError

MIN_SIDE = 8  # a stamp with a side below this is refused (WRONG_SHAPE)
BLANK_ABS = 1e30  # |pixel| at or above this is a blank sentinel (ZTF writes -FLT_MAX)
MAD_TO_SIGMA = 1.4826  # sigma of a Gaussian = 1.4826 * its median absolute deviation
_GZIP_MAGIC = b"\x1f\x8b"
_FITS_MAGIC = b"SIMPLE"


class StampError(Exception):
    """One stamp cannot be used; ``reason`` is one of :data:`~astro_classifier.core.cutouts.FAILURE_REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}")


# -- one stamp ------------------------------------------------------------------------------
def stamp_bytes(value: Any) -> bytes | None:
    """The FITS bytes of a cutout field: ZTF's ``{fileName, stampData}`` record or Rubin's
    bytes; None when the alert has no such cutout."""
    if isinstance(value, Mapping):
        value = value.get("stampData")
    if value is None:
        return None
    if not isinstance(value, bytes | bytearray | memoryview):
        raise StampError(NOT_FITS, f"cutout is a {type(value).__name__}, not bytes")
    return bytes(value)


def decode_stamp(data: bytes | None) -> np.ndarray:
    """Gzipped or plain FITS bytes -> the image as a 2-D float32 array (FITS storage order,
    ``shape == (NAXIS2, NAXIS1)``). Raises :class:`StampError` with the reason."""
    from astropy.io import fits  # imported here: only image models pay for astropy

    if not data:
        raise StampError(MISSING, "no bytes")
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise StampError(CORRUPT_GZIP, f"{type(exc).__name__}: {exc}") from None
    if data[: len(_FITS_MAGIC)] != _FITS_MAGIC:
        raise StampError(NOT_FITS, f"starts with {data[:8]!r}, expected gzip or FITS 'SIMPLE'")
    try:
        with warnings.catch_warnings():
            # Rubin's stamps pad the SIMPLE card unusually: astropy warns, then reads them fine.
            # A truncated data unit is an error, not a warning.
            warnings.simplefilter("ignore")
            with fits.open(io.BytesIO(data), memmap=False, lazy_load_hdus=False) as hdul:
                image = next((h.data for h in hdul if h.is_image and h.data is not None), None)
                if image is None:
                    raise StampError(NOT_FITS, f"no image HDU among {len(hdul)} HDU(s)")
                image = np.array(image, dtype=np.float32)  # native byte order, a copy
    except StampError:
        raise
    except Exception as exc:  # astropy raises many kinds on corrupt headers and data
        raise StampError(NOT_FITS, f"{type(exc).__name__}: {exc}") from None
    if image.ndim > 2:
        image = image.reshape([n for n in image.shape if n != 1] or [1])
    if image.ndim != 2 or min(image.shape) < MIN_SIDE:
        raise StampError(WRONG_SHAPE, f"shape {image.shape}, expected 2-D with sides >= {MIN_SIDE}")
    return image


def center_crop_or_pad(image: np.ndarray, size: int = STAMP_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(out, inside): ``image`` centre-cropped or zero-padded to ``size x size``; ``inside`` is
    True where ``out`` holds an input pixel. Output pixel ``(size - 1) // 2`` is input pixel
    ``(n - 1) // 2`` on each axis."""
    out = np.zeros((size, size), dtype=image.dtype)
    inside = np.zeros((size, size), dtype=bool)
    src, dst = [], []
    for n in image.shape:
        shift = (size - 1) // 2 - (n - 1) // 2  # output index = input index + shift
        lo, hi = max(0, -shift), min(n, size - shift)
        src.append(slice(lo, hi))
        dst.append(slice(lo + shift, hi + shift))
    out[tuple(dst)] = image[tuple(src)]
    inside[tuple(dst)] = True
    return out, inside


def normalise_stamp(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(normalised, finite) of one stamp: ``asinh((x - median) / scale)`` on finite pixels
    (scale = 1.4826 MAD, else the standard deviation, else 1); non-finite pixels and blank
    sentinels (``|x| >= 1e30``) are 0 and not ``finite``.
    Raises :class:`StampError` (:data:`ALL_NAN`) when no pixel is finite."""
    image = np.asarray(image, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        finite = np.abs(image) < BLANK_ABS  # False for NaN, inf and blank sentinels
    values = image[finite].astype(np.float64)
    if values.size == 0:
        raise StampError(ALL_NAN, f"none of the {image.size} pixels is finite")
    median = np.median(values)
    scale = MAD_TO_SIGMA * np.median(np.abs(values - median))
    if not scale > 0:
        scale = values.std()
    if not scale > 0:
        scale = 1.0
    out = np.zeros(image.shape, dtype=np.float32)
    out[finite] = np.arcsinh((values - median) / scale)
    return out, finite


def prepare_stamp(value: Any, size: int = STAMP_SIZE) -> tuple[np.ndarray, np.ndarray, tuple]:
    """A cutout field -> (normalised size x size image, validity mask, original shape)."""
    image = decode_stamp(stamp_bytes(value))
    normalised, finite = normalise_stamp(image)
    out, inside = center_crop_or_pad(normalised, size)
    valid, _ = center_crop_or_pad(finite, size)
    return out, valid & inside, image.shape


# -- the batch ------------------------------------------------------------------------------
def label_value(value: Any) -> float:
    """A label field of an alert as float64 (NaN: null or not a number)."""
    try:
        return np.nan if value is None else float(value)
    except (TypeError, ValueError):
        return np.nan


def stamps_to_batch(
    rows: list[tuple[str, str, dict[str, float], Mapping[str, Any]]],
    survey: str,
    source: str,
    size: int,
) -> CutoutBatch:
    """(object_id, alert_id, label fields, record holding the cutouts) rows -> batch."""
    n = len(rows)
    images = np.zeros((n, 3, size, size), np.float32)
    valid = np.zeros((n, 3, size, size), bool)
    ok = np.ones(n, bool)
    failure = np.full(n, "", dtype=object)
    shape = np.zeros((n, 3, 2), np.int32)
    failures: dict[str, int] = {}
    for i, (_, _, _, record) in enumerate(rows):
        reasons = []
        for c, name in enumerate(STAMPS):
            try:
                images[i, c], valid[i, c], shape[i, c] = prepare_stamp(record.get(name), size)
            except StampError as exc:
                failures[exc.reason] = failures.get(exc.reason, 0) + 1
                reasons.append(f"{name}: {exc}")
        if reasons:
            ok[i] = False
            failure[i] = "; ".join(reasons)
            images[i] = 0.0
            valid[i] = False
    fields = {k: np.array([r[2].get(k, np.nan) for r in rows], np.float64) for k in LABEL_FIELDS}
    fields["ss_object"] = np.array([r[2].get("ss_object", np.nan) for r in rows], np.float64)
    ids = np.empty(n, dtype=object)
    ids[:] = [r[0] for r in rows]
    alert_ids = np.empty(n, dtype=object)
    alert_ids[:] = [r[1] for r in rows]
    return CutoutBatch(
        images=images,
        valid=valid,
        ok=ok,
        failure=failure,
        shape=shape,
        survey=np.full(n, survey, dtype=object),
        object_id=ids,
        alert_id=alert_ids,
        source=np.full(n, source, dtype=object),
        fields=fields,
        failures=failures,
    )


def parquet_stamp_records(
    data: bytes, source: str, fields: Sequence[Any], format: str
) -> list[dict[str, Any]]:
    """The records of a Parquet file of alert rows (a file's or message's bytes), holding only
    the top-level columns of ``fields`` (a projection, as for Avro) that the file has."""
    try:
        parquet = pq.ParquetFile(pa.BufferReader(data))
        names = parquet.schema_arrow.names
        columns = [c if isinstance(c, str) else c[0] for c in fields]
        return parquet.read(columns=[c for c in columns if c in names]).to_pylist()
    except (OSError, pa.ArrowException) as exc:
        raise InputError(source, f"cannot read Parquet ({exc}); expected {format}") from exc

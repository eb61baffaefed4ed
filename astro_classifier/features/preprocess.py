"""Light curves -> model inputs: the one preprocessing used by training, batch and stream.

The arrays of :class:`ModelInputs` are exactly the inputs of every exported ONNX graph
(same names, dtypes and shapes), so a model sees the same tensors whichever door the data
came through. The constants that steer this (bands, maximum length, flux scale, feature
names) are a :class:`PreprocessingSpec`, stored in each model's metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from astro_classifier.core.lightcurve import BAND_INDEX, BANDS, LightCurveBatch
from astro_classifier.features.lc_features import compute_light_curve_features, feature_names
from astro_classifier.features.render import nightly_bin

# Object metadata a model may use as tabular inputs (canonical names, see formats/plasticc.py).
# hostgal_specz is deliberately absent: it is unknown for most real objects. ra and decl
# (degrees) are for models that derive the galactic latitude in their graph (families/clip.py).
KNOWN_METADATA_FEATURES = (
    "hostgal_photoz",
    "hostgal_photoz_err",
    "mwebv",
    "ddf",
    "distmod",
    "ra",
    "decl",
)

METADATA_ALIASES = {"decl": "dec"}  # feature -> the readers' column used when it is absent


class PreprocessingSpec(BaseModel):
    """Constants of the preprocessing, stored in the model so serving repeats training."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bands: tuple[str, ...] = Field(
        BANDS, description="canonical bands the model uses, in token-id order"
    )
    max_length: int = Field(256, ge=1, description="most recent points kept per light curve")
    flux_scale_njy: float = Field(
        1000.0, gt=0, description="asinh softening scale: token = asinh(flux / scale)"
    )
    metadata_features: tuple[str, ...] = Field(
        (), description="object metadata columns used as tabular inputs (NaN when absent)"
    )
    light_curve_features: bool = Field(True, description="append light-curve package features")
    nightly_bin: bool = Field(
        False,
        description="reduce each light curve to one point per band and night before anything "
        "else (features/render.py nightly_bin), so that dense histories (multi-year forced "
        "photometry, Rubin deep fields) look like the light curves the model was trained on",
    )
    masked_features: tuple[str, ...] = Field(
        (),
        description="tabular features always given as missing (NaN): those that measure the "
        "catalogue or processing a light curve came from rather than the object",
    )

    @field_validator("bands")
    @classmethod
    def _known_bands(cls, bands: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [b for b in bands if b not in BAND_INDEX]
        if unknown or not bands:
            raise ValueError(
                f"bands must be a non-empty subset of {list(BANDS)}, got {list(bands)}"
            )
        return bands

    @field_validator("metadata_features")
    @classmethod
    def _known_metadata(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [n for n in names if n not in KNOWN_METADATA_FEATURES]
        if unknown:
            raise ValueError(
                f"unknown metadata feature(s) {unknown}; known: {list(KNOWN_METADATA_FEATURES)}"
            )
        return names

    @field_validator("masked_features")
    @classmethod
    def _known_features(cls, names: tuple[str, ...], info: Any) -> tuple[str, ...]:
        data = info.data
        known = list(data.get("metadata_features", ()))
        if data.get("light_curve_features", True):
            known += feature_names(data.get("bands", BANDS))
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"masked_features {unknown} are not tabular features of this spec")
        return names

    @property
    def feature_names(self) -> list[str]:
        """Column names of the ``tabular`` input, in order."""
        names = list(self.metadata_features)
        if self.light_curve_features:
            names += feature_names(self.bands)
        return names


@dataclass
class ModelInputs:
    """Inputs of one model call; field names are the ONNX input names.

    B objects, L = longest kept light curve in the call, F = len(spec.feature_names).
    """

    flux: np.ndarray  # (B, L) float32, asinh(flux / flux_scale_njy), 0 at padding
    flux_err: np.ndarray  # (B, L) float32, asinh(flux_err / flux_scale_njy), 0 at padding
    time: np.ndarray  # (B, L) float32, days since the object's first detection, 0 at padding
    band: np.ndarray  # (B, L) int64, index into spec.bands, 0 at padding
    mask: np.ndarray  # (B, L) bool, True for real points
    tabular: np.ndarray  # (B, F) float32, raw feature values, NaN = missing

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def as_dict(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in self.names()}

    def __len__(self) -> int:
        return self.flux.shape[0]

    def take(self, index: np.ndarray, length: int | None = None) -> ModelInputs:
        """Rows ``index``, cut to the first ``length`` positions (default: all)."""
        cut = slice(None) if length is None else slice(0, length)
        return ModelInputs(
            **{
                name: (value[index] if name == "tabular" else value[index, cut])
                for name, value in self.as_dict().items()
            }
        )


def keep_model_bands(
    batch: LightCurveBatch, spec: PreprocessingSpec
) -> tuple[LightCurveBatch, int]:
    """The light curves as the model sees them: points in bands the model does not use
    dropped, then (``spec.nightly_bin``) one point per band and night. Returns the batch and
    the count of points outside the model's bands.

    Every door (training, batch, stream, evaluation) starts here, so that a change of view
    reaches all of them at once."""
    keep = np.isin(batch.band, [BAND_INDEX[b] for b in spec.bands])
    outside = int((~keep).sum())
    if not keep.all():
        batch = batch.select_points(keep)
    if spec.nightly_bin:
        batch = nightly_bin(batch)
    return batch, outside


def truncate_for_model(
    batch: LightCurveBatch, spec: PreprocessingSpec, days: float | np.ndarray
) -> LightCurveBatch:
    """The model's bands of each light curve, cut ``days`` after its first detection in them.

    The age of a light curve is counted in the bands the model sees; training (features per
    truncation) and truncated evaluation both cut through here.
    """
    batch, _ = keep_model_bands(batch, spec)
    return batch.truncate_after_first_detection(days)


def tabular_features(
    batch: LightCurveBatch, spec: PreprocessingSpec, n_jobs: int = 1
) -> np.ndarray:
    """(N, F) float32 tabular inputs: metadata columns (NaN when absent) + light-curve features.

    ``decl`` (PLAsTiCC's name) is read from ``dec`` (every alert reader's) when absent."""
    missing = np.full(len(batch), np.nan)
    columns = [
        np.asarray(
            batch.metadata.get(name, batch.metadata.get(METADATA_ALIASES.get(name, ""), missing)),
            np.float32,
        )[:, None]
        for name in spec.metadata_features
    ]
    if spec.light_curve_features:
        columns.append(compute_light_curve_features(batch, spec.bands, n_jobs=n_jobs))
    if not columns:
        return np.zeros((len(batch), 0), np.float32)
    out = np.concatenate(columns, axis=1).astype(np.float32)
    if spec.masked_features:
        names = spec.feature_names
        out[:, [names.index(n) for n in spec.masked_features]] = np.nan
    return out


def window_start(batch: LightCurveBatch, max_length: int) -> np.ndarray:
    """Index (within each object) of the first point the model sees, (N,) int64.

    A light curve of at most ``max_length`` points is seen whole. A longer one (years of
    forced photometry, a long-lived variable) is seen through a window of ``max_length``
    points around its brightest point (highest flux / flux error; the first such point on a
    tie): the window ends ``max_length // 2`` points after that point, or at the last point
    if that comes first. For an alert whose brightest point is recent this is the most
    recent points; for a multi-year file it is the event, not only the latest quiet epochs.
    """
    n = batch.lengths
    start = np.zeros(len(batch), np.int64)
    long = np.flatnonzero(n > max_length)
    if len(long) == 0:
        return start
    points, offsets = batch.point_positions(long)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.nan_to_num(batch.flux[points] / batch.flux_err[points], nan=-np.inf)
    owner = np.repeat(np.arange(len(long)), np.diff(offsets))
    # per object, the first point of highest S/N (np.argmax's tie rule), in one pass
    best = np.maximum.reduceat(snr, offsets[:-1])  # long objects are never empty
    at_best = np.flatnonzero(snr == best[owner])
    first = np.ones(len(at_best), bool)
    first[1:] = owner[at_best[1:]] != owner[at_best[:-1]]
    peak = at_best[first] - offsets[:-1]
    end = np.minimum(np.maximum(peak + max_length // 2 + 1, max_length), n[long])
    start[long] = end - max_length
    return start


class InputLayout:
    """Where every point of a batch goes in the padded model inputs, computed once.

    Holds the per-point token values (asinh flux and error, time since first detection,
    band id) and each kept point's column, so that the inputs of any subset of objects, at
    any width, are a gather and a scatter: serving builds each length bucket's calls from
    one layout of the whole micro-batch, with no Python loop over objects.
    """

    def __init__(
        self, batch: LightCurveBatch, spec: PreprocessingSpec, prepared: bool = False
    ) -> None:
        """``prepared``: ``batch`` already went through :func:`keep_model_bands` (serving
        does that once per micro-batch; binning twice would cost as much as the features)."""
        if not prepared:
            batch, _ = keep_model_bands(batch, spec)
        self.batch = batch
        self.lengths = np.minimum(batch.lengths, spec.max_length)
        obj = batch.point_object_index()
        start = window_start(batch, spec.max_length)
        index_in_object = np.arange(len(obj)) - batch.offsets[:-1][obj]
        self.position = index_in_object - start[obj]
        self.kept = (self.position >= 0) & (self.position < self.lengths[obj])
        t0 = batch.first_detection_time()
        band_lut = np.zeros(len(BANDS), np.int64)
        band_lut[[BAND_INDEX[b] for b in spec.bands]] = np.arange(len(spec.bands))
        scale = spec.flux_scale_njy
        self.flux = np.arcsinh(batch.flux / scale).astype(np.float32)
        self.flux_err = np.arcsinh(batch.flux_err / scale).astype(np.float32)
        self.time = (batch.time - t0[obj]).astype(np.float32)
        self.band = band_lut[batch.band]

    def inputs(
        self, index: np.ndarray, tabular: np.ndarray, width: int | None = None
    ) -> ModelInputs:
        """Inputs of objects ``index`` (rows in that order), padded to ``width`` points
        (default: their longest kept curve); ``tabular``: their (len(index), F) features."""
        index = np.asarray(index, np.int64)
        longest = max(int(self.lengths[index].max(initial=0)), 1)
        if width is None:
            width = longest
        elif width < longest:
            raise ValueError(
                f"width {width} is shorter than the longest kept light curve ({longest})"
            )
        points, offsets = self.batch.point_positions(index)
        rows = np.repeat(np.arange(len(index)), np.diff(offsets))
        kept = self.kept[points]
        points = points[kept]
        flat = rows[kept] * width + self.position[points]  # one flat scatter index per point

        def grid(values: np.ndarray) -> np.ndarray:
            out = np.zeros(len(index) * width, values.dtype)
            out[flat] = values[points]
            return out.reshape(len(index), width)

        mask = np.zeros(len(index) * width, bool)
        mask[flat] = True
        mask = mask.reshape(len(index), width)
        return ModelInputs(
            flux=grid(self.flux),
            flux_err=grid(self.flux_err),
            time=grid(self.time),
            band=grid(self.band),
            mask=mask,
            tabular=np.ascontiguousarray(tabular, dtype=np.float32),
        )


def light_curves_to_inputs(
    batch: LightCurveBatch,
    spec: PreprocessingSpec,
    tabular: np.ndarray | None = None,
    n_jobs: int = 1,
    width: int | None = None,
) -> ModelInputs:
    """Build model inputs for every object of ``batch`` (padded to the longest kept curve).

    Points in bands outside ``spec.bands`` are ignored; a light curve longer than
    ``spec.max_length`` points is seen through the window of :func:`window_start`. Time is
    counted from the first detection of the whole light curve (before cutting), so it means
    the same thing however long the history is. ``tabular`` may be given precomputed
    (training does, for truncated curves); otherwise it is computed from ``batch`` here.
    ``width`` pads the point axis to a fixed length (a serving bucket); by default it is the
    longest kept light curve.
    """
    layout = InputLayout(batch, spec)
    if tabular is None:
        tabular = tabular_features(layout.batch, spec, n_jobs=n_jobs)
    return layout.inputs(np.arange(len(layout.batch)), tabular, width=width)

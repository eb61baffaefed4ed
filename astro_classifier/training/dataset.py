"""Training dataset files (HDF5): canonical light curves, labels, and tabular features
precomputed at several truncation times.

Training truncates light curves at random times so that young light curves classify well;
the tabular features must then describe the truncated curve, not the whole one. Computing
them on the fly would dominate training time, so they are computed once per truncation time
(``truncation_days`` after first detection; ``inf`` = the whole curve) with the same code
that serving uses, and stored here. Layout::

    /lightcurves/{object_id, offsets, time, band, flux, flux_err, detected, label}
    /lightcurves/alert_id   (N,) str, "" = none    only when the objects came from alerts
    /lightcurves/metadata/<name>
    /features            (T, N, F) float32, T = len(truncation_days)
    /spectra/{object_id, offsets, wavelength, flux, flux_err, time, redshift, flux_unit,
              source}, /spectra/row (N,) int64    only when spectra are attached
    /images/{images (N, 3, S, S) float32, ok (N,) bool, failure (N,) str}
                                                  only when cutouts are attached
    attrs: truncation_days, spec (JSON), content_hash, source

Spectra (multimodal models): :meth:`TrainingDataset.attach_spectra` keeps one canonical
spectrum per object (:meth:`Spectra.one_per_object`, closest to the light curve's brightest
point) and ``spectrum_row[i]`` is object ``i``'s row in ``spectra`` (-1: none). Resampling and
normalisation onto a model's grid happen later, in :func:`astro_classifier.features.spectra.model_input`.

Images (models with the ``image`` modality): :meth:`TrainingDataset.attach_cutouts` keeps
each object's alert stamps, decoded and normalised by :mod:`astro_classifier.formats.stamps`
(the decoding serving uses), ``image_ok[i]`` False where the object has none usable.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from astro_classifier.core.cutouts import align_cutouts
from astro_classifier.core.lightcurve import LightCurveBatch
from astro_classifier.core.spectra import Spectra
from astro_classifier.features.preprocess import (
    PreprocessingSpec,
    keep_model_bands,
    tabular_features,
    truncate_for_model,
)
from astro_classifier.features.spectra import peak_times

_ARRAYS = ("offsets", "time", "band", "flux", "flux_err", "detected")
_SPECTRA_ARRAYS = ("offsets", "wavelength", "flux", "flux_err", "time", "redshift")
_SPECTRA_TEXT = ("object_id", "flux_unit", "source")


def content_hash(batch: LightCurveBatch) -> str:
    """SHA-256 over the light-curve arrays, metadata and labels (identifies training data)."""
    h = hashlib.sha256()
    for name in _ARRAYS:
        h.update(np.ascontiguousarray(getattr(batch, name)).tobytes())
    h.update("\0".join(batch.object_id.tolist()).encode())
    for key in sorted(batch.metadata):
        h.update(key.encode())
        h.update(np.ascontiguousarray(batch.metadata[key], np.float64).tobytes())
    if batch.label is not None:
        h.update("\0".join(batch.label.tolist()).encode())
    return h.hexdigest()


@dataclass
class TrainingDataset:
    batch: LightCurveBatch  # only the points in the spec's bands
    features: np.ndarray  # (T, N, F) float32
    truncation_days: np.ndarray  # (T,) float64, inf = whole curve
    spec: PreprocessingSpec
    content_hash: str
    source: str
    spectra: Spectra | None = None  # one per object that has one; None: none attached
    spectrum_row: np.ndarray | None = None  # (N,) int64 row in spectra, -1 = none
    images: np.ndarray | None = None  # (N, 3, S, S) float32 normalised stamps; None: none
    image_ok: np.ndarray | None = None  # (N,) bool: the object's stamps are usable
    image_failure: np.ndarray | None = None  # (N,) str: why not ("" when ok)

    def attach_cutouts(self, cutouts) -> None:
        """Keep the stamps of each object's alert (a CutoutBatch, aligned by alert id)."""
        aligned = align_cutouts(self.batch, cutouts)
        self.images, self.image_ok = aligned.images, aligned.ok
        self.image_failure = np.asarray(aligned.failure, dtype=str)

    def attach_spectra(self, spectra: Spectra) -> None:
        """Keep one spectrum per object of this dataset (the one closest to the light
        curve's brightest point); objects without one get row -1."""
        b = self.batch
        mine = spectra.select(np.flatnonzero(np.isin(spectra.object_id, b.object_id)))
        peaks = peak_times(b.object_id, b.time, b.flux, b.point_object_index())
        one = mine.one_per_object(peaks)
        one.dropped = dict(spectra.dropped)
        self.spectra = one
        self.spectrum_row = one.index_of(b.object_id)

    @classmethod
    def build(
        cls,
        batch: LightCurveBatch,
        spec: PreprocessingSpec,
        truncation_days: Sequence[float],
        source: str,
        progress: Callable[[int, int], None] | None = None,
    ) -> TrainingDataset:
        """Compute features of ``batch`` at every truncation time (the slow step, ~1 min)."""
        if batch.label is None:
            raise ValueError(f"{source}: training data must be labelled")
        batch, _ = keep_model_bands(batch, spec)
        days = np.asarray(sorted(truncation_days), np.float64)
        features = np.empty((len(days), len(batch), len(spec.feature_names)), np.float32)
        for i, d in enumerate(days):
            cut = batch if np.isinf(d) else truncate_for_model(batch, spec, d)
            features[i] = tabular_features(cut, spec)
            if progress is not None:
                progress(i + 1, len(days))
        return cls(batch, features, days, spec, content_hash(batch), source)

    def save(self, path: str | Path) -> None:
        with h5py.File(path, "w") as f:
            g = f.create_group("lightcurves")
            g["object_id"] = self.batch.object_id.astype("S")
            g["label"] = self.batch.label.astype("S")
            for name in _ARRAYS:
                g.create_dataset(name, data=getattr(self.batch, name), compression="lzf")
            if self.batch.alert_id is not None:
                g["alert_id"] = np.char.encode(
                    np.array(["" if a is None else a for a in self.batch.alert_id], dtype=str),
                    "utf-8",
                )
            m = g.create_group("metadata")
            for key, col in self.batch.metadata.items():
                m[key] = col
            f.create_dataset("features", data=self.features, compression="lzf")
            f.attrs["truncation_days"] = self.truncation_days
            f.attrs["spec"] = self.spec.model_dump_json()
            f.attrs["content_hash"] = self.content_hash
            f.attrs["source"] = self.source
            if self.spectra is not None:
                sp = f.create_group("spectra")
                for name in _SPECTRA_ARRAYS:
                    sp.create_dataset(name, data=getattr(self.spectra, name), compression="lzf")
                for name in _SPECTRA_TEXT:
                    sp[name] = np.char.encode(getattr(self.spectra, name), "utf-8")
                sp["row"] = self.spectrum_row
                sp.attrs["dropped"] = json.dumps(self.spectra.dropped)
            if self.images is not None:
                im = f.create_group("images")
                im.create_dataset("images", data=self.images, compression="lzf")
                im["ok"] = self.image_ok
                im["failure"] = np.char.encode(self.image_failure.astype(str), "utf-8")

    @classmethod
    def load(cls, path: str | Path) -> TrainingDataset:
        with h5py.File(path, "r") as f:
            g = f["lightcurves"]
            alert_id = None
            if "alert_id" in g:
                alert_id = np.char.decode(g["alert_id"][:], "utf-8").astype(object)
                alert_id[alert_id == ""] = None
            batch = LightCurveBatch(
                object_id=g["object_id"][:].astype(str),
                label=g["label"][:].astype(str),
                alert_id=alert_id,
                metadata={k: v[:] for k, v in g["metadata"].items()},
                **{name: g[name][:] for name in _ARRAYS},
            )
            spectra = row = None
            if "spectra" in f:
                sp = f["spectra"]
                spectra = Spectra(
                    **{n: sp[n][:] for n in _SPECTRA_ARRAYS},
                    **{n: np.char.decode(sp[n][:], "utf-8") for n in _SPECTRA_TEXT},
                    dropped=json.loads(sp.attrs["dropped"]),
                )
                row = sp["row"][:]
            images = ok = failure = None
            if "images" in f:
                images, ok = f["images/images"][:], f["images/ok"][:]
                failure = np.char.decode(f["images/failure"][:], "utf-8")
            return cls(
                batch=batch,
                features=f["features"][:],
                truncation_days=np.asarray(f.attrs["truncation_days"]),
                spec=PreprocessingSpec.model_validate(json.loads(f.attrs["spec"])),
                content_hash=str(f.attrs["content_hash"]),
                source=str(f.attrs["source"]),
                spectra=spectra,
                spectrum_row=row,
                images=images,
                image_ok=ok,
                image_failure=failure,
            )

    def __len__(self) -> int:
        return len(self.batch)

    def truncated(self, index: np.ndarray, level: np.ndarray) -> tuple[LightCurveBatch, np.ndarray]:
        """Objects ``index`` cut at truncation level ``level`` (indices into truncation_days).

        Returns the truncated light curves and their matching features (len(index), F).
        """
        sub = self.batch.select(index)
        days = self.truncation_days[level]
        if np.isfinite(days).any():
            sub = sub.truncate_after_first_detection(days)
        return sub, self.features[level, index]

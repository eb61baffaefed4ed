"""Embeddings of a multimodal (CLIP) model and exact cosine similarity search (numpy only).

:func:`embed_objects` runs the same preprocessing and length buckets as
:func:`astro_classifier.inference.classify.classify` and reads one of the model's embedding
outputs (a tower's, ``embedding_<modality>``, or the fused ``embedding``), so the vector of an
object does not depend on the other objects of its call. The table has one row per object:
``object_id`` (string), ``model`` (name + version), ``modality``, ``vector`` (fixed-size list
of float32, L2-normalised). Every session call holds exactly :data:`CALL_ROWS` rows (one
object), so the vector of an object is bit-identical in a batch file and in a stream-sized
batch; ``call_rows`` > 1 is faster and agrees to about 1e-7.

:func:`search` is exact: cosine similarity = dot product of unit vectors, top k by
``argpartition``, in blocks of queries so memory stays bounded. :class:`HNSWIndex` is the
approximate alternative for large indexes (FAISS's HNSW graph on inner products, the
``search`` extra): sub-millisecond queries at 10^6 vectors, at a recall@10 against exact
search that ``ef_search`` trades for speed (tests/test_embed_index.py checks it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from astro_classifier.core.cutouts import CutoutBatch
from astro_classifier.core.errors import InputError, ModelError
from astro_classifier.core.lightcurve import LightCurveBatch
from astro_classifier.core.spectra import Spectra
from astro_classifier.features.preprocess import keep_model_bands, tabular_features
from astro_classifier.features.spectra import spectra_for
from astro_classifier.inference.classify import bucketed_inputs
from astro_classifier.inference.model import LoadedModel

FUSED = "fused"
# Every session call of embed_objects has exactly this many rows (the last chunk of a bucket
# is padded with copies of its first row). ONNX Runtime's CPU kernels round differently
# depending on an object's row within a call (measured: about 3 % of metadata vectors differ
# in the last bit between a 512-object file and 7-object stream batches with 32-row calls,
# none with 1-row calls), and an object's vector must not depend on its batch.
CALL_ROWS = 1


def embedding_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            ("object_id", pa.string()),
            ("model", pa.string()),
            ("modality", pa.string()),
            ("vector", pa.list_(pa.float32(), dim)),
        ]
    )


def embed_objects(
    batch: LightCurveBatch,
    model: LoadedModel,
    modality: str = "photometry",
    batch_size: int = 512,
    n_jobs: int = 1,
    call_rows: int | None = None,
    spectra: Spectra | None = None,
) -> tuple[pa.Table, int]:
    """(embedding table, number of objects skipped: no finite point in the model's bands,
    for ``metadata`` no finite metadata value, for ``spectrum`` / ``image`` no usable
    spectrum / stamps). ``spectra``: the spectra beside the light curves (a model with a
    spectrum tower uses each object's, see :func:`astro_classifier.features.spectra.spectra_for`);
    images come with the batch (``batch.cutouts``)."""
    meta = model.metadata
    if not meta.modalities:
        raise ModelError(f"{model.path}: {meta.name} is not a multimodal (CLIP) model")
    spec = meta.preprocessing
    batch, _ = keep_model_bands(batch, spec)
    finite = np.isfinite(batch.time) & np.isfinite(batch.flux) & np.isfinite(batch.flux_err)
    ok = np.bincount(batch.point_object_index()[~finite], minlength=len(batch)) == 0
    ok &= batch.lengths > 0
    if modality == "spectrum" and spectra is None:
        raise ModelError(
            "no spectra given: spectrum embeddings need inputs that hold spectra (the osc and "
            "slsne formats)"
        )
    if spectra is not None and not (meta.modalities and "spectrum" in meta.modalities):
        if modality == "spectrum":
            raise ModelError(f"{model.path}: {meta.name} has no spectrum tower")
        spectra = None
    cutouts = None
    if model.needs_images:  # the stamps the batch carries (the caller decoded them)
        size = int(meta.image_size or 63)
        cutouts = (
            batch.cutouts if batch.cutouts is not None else CutoutBatch.missing(len(batch), size)
        )
    elif modality == "image":
        raise ModelError(f"{model.path}: {meta.name} has no image tower")
    tabular = tabular_features(batch, spec, n_jobs=n_jobs)
    if modality == "metadata":  # objects without any metadata value have no such embedding
        ok &= np.isfinite(tabular).any(axis=1)
    if modality == "image":  # objects without usable stamps have no image embedding
        ok &= cutouts.ok
    spectrum = has_spectrum = None
    if spectra is not None:
        spectrum, has_spectrum = spectra_for(batch, spectra, meta.spectrum_grid)
        if modality == "spectrum":
            ok &= has_spectrum
    keep = np.flatnonzero(ok)
    if len(keep) < len(batch):
        batch, tabular = batch.select(keep), tabular[keep]
        cutouts = None if cutouts is None else cutouts.take(keep)
        if spectrum is not None:
            spectrum, has_spectrum = spectrum[keep], has_spectrum[keep]
    dim = int(meta.embedding_dim or 0)
    vectors = np.empty((len(batch), dim), np.float32)
    if len(batch):
        which = None if modality == FUSED else modality
        for index, inputs in bucketed_inputs(batch, spec, tabular, meta.length_buckets, batch_size):
            step = call_rows or CALL_ROWS
            for start in range(0, len(index), step):
                rows = np.arange(start, min(start + step, len(index)))
                padded = np.concatenate([rows, np.full(step - len(rows), rows[0])])
                objects = index[padded]
                extra: dict = {"presence": {}}
                if cutouts is not None:
                    extra["presence"]["image"] = cutouts.ok[objects]
                    extra["image"] = cutouts.images[objects]
                if spectrum is not None:
                    extra["presence"]["spectrum"] = has_spectrum[objects]
                    extra["spectrum"] = spectrum[objects]
                vectors[index[rows]] = model.embed(inputs.take(padded), which, **extra)[: len(rows)]
    flat = pa.array(vectors.reshape(-1), pa.float32())
    table = pa.table(
        {
            "object_id": pa.array(batch.object_id.astype(str), pa.string()),
            "model": pa.array([f"{meta.name} {meta.version}"] * len(batch), pa.string()),
            "modality": pa.array([modality] * len(batch), pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(flat, dim),
        },
        schema=embedding_schema(dim),
    )
    return table, int((~ok).sum())


def read_embeddings(path: str | Path, modality: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(object ids, (N, D) float32 unit vectors) of an embedding Parquet file."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise InputError(path, f"not a readable embedding Parquet file ({exc})") from exc
    if not {"object_id", "vector", "modality"} <= set(table.column_names):
        raise InputError(path, "needs columns object_id, modality and vector (astroclf embed)")
    modalities = sorted(set(table.column("modality").to_pylist()))
    if modality is not None:
        table = table.filter(pc.equal(table["modality"], modality))
        if table.num_rows == 0:
            raise InputError(path, f"no {modality!r} embeddings (it holds {modalities})")
    elif len(modalities) > 1:
        raise InputError(path, f"holds several modalities {modalities}: choose one (--modality)")
    vector = table.column("vector").combine_chunks()
    dim = vector.type.list_size
    values = np.asarray(vector.flatten().to_numpy(), np.float32).reshape(-1, dim)
    norms = np.linalg.norm(values, axis=1, keepdims=True)
    values = values / np.maximum(norms, 1e-12)
    ids = np.asarray(table.column("object_id").to_pylist(), dtype=str)
    return ids, values


def embedding_models(path: str | Path) -> list[str]:
    """The distinct ``model`` values (name and version) of an embedding Parquet file."""
    try:
        column = pq.read_table(path, columns=["model"]).column("model")
    except (OSError, pa.ArrowInvalid, KeyError) as exc:
        raise InputError(path, f"not a readable embedding Parquet file ({exc})") from exc
    return sorted(set(column.to_pylist()))


def search(
    queries: np.ndarray,
    index: np.ndarray,
    k: int = 10,
    exclude: np.ndarray | None = None,
    index_ids: np.ndarray | None = None,
    block: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` cosine search: (positions (Q, k) int64, similarities (Q, k) float32),
    best first. ``exclude``: per query, an id (of ``index_ids``) never returned (itself)."""
    k = min(k, len(index) - (1 if exclude is not None else 0))
    if k <= 0:
        raise ValueError("the index holds no other vector to return")
    pos = np.empty((len(queries), k), np.int64)
    sim = np.empty((len(queries), k), np.float32)
    for start in range(0, len(queries), block):
        s = queries[start : start + block] @ index.T  # (b, N)
        if exclude is not None:
            same = exclude[start : start + block, None] == index_ids[None, :]
            s = np.where(same, -np.inf, s)
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        pos[start : start + block] = top
        sim[start : start + block] = np.take_along_axis(s, top, axis=1)
    return pos, sim


def _exclude_self(
    pos: np.ndarray,
    sim: np.ndarray,
    k: int,
    exclude: np.ndarray | None,
    index_ids: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Drop, per query row, the neighbours whose id is ``exclude`` (and FAISS's -1 fillers);
    keep the first ``k`` of the rest."""
    out_pos = np.full((len(pos), k), -1, np.int64)
    out_sim = np.full((len(pos), k), -np.inf, np.float32)
    for row in range(len(pos)):
        keep = pos[row] >= 0
        if exclude is not None and index_ids is not None:
            keep &= index_ids[np.maximum(pos[row], 0)] != exclude[row]
        chosen = np.flatnonzero(keep)[:k]
        out_pos[row, : len(chosen)] = pos[row, chosen]
        out_sim[row, : len(chosen)] = sim[row, chosen]
    return out_pos, out_sim


class HNSWIndex:
    """Approximate cosine search: a FAISS HNSW graph over unit vectors (inner product).

    ``m``: graph degree; ``ef_construction``: build-time beam; ``ef_search``: query-time beam
    (higher: better recall, slower). Build cost grows as N log N (measured by
    ``python -m benchmarks.embed_search``, results in benchmarks/RESULTS.md).
    """

    def __init__(self, vectors: np.ndarray, m: int = 32, ef_construction: int = 128) -> None:
        try:
            import faiss
        except ImportError as exc:
            raise ModelError(
                "approximate search needs FAISS: pip install 'astro-classifier[search]'"
            ) from exc
        vectors = np.ascontiguousarray(vectors, np.float32)
        self.size, self.dim = vectors.shape
        self._index = faiss.IndexHNSWFlat(self.dim, m, faiss.METRIC_INNER_PRODUCT)
        self._index.hnsw.efConstruction = ef_construction
        self._index.add(vectors)

    def search(
        self,
        queries: np.ndarray,
        k: int = 10,
        exclude: np.ndarray | None = None,
        index_ids: np.ndarray | None = None,
        ef_search: int = 128,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Same contract as :func:`search`: (positions (Q, k), similarities (Q, k)), best
        first; a position of -1 (similarity -inf) where the graph returned fewer."""
        k = min(k, self.size - (1 if exclude is not None else 0))
        if k <= 0:
            raise ValueError("the index holds no other vector to return")
        self._index.hnsw.efSearch = max(ef_search, k + 1)
        asked = min(k + (1 if exclude is not None else 0), self.size)
        sim, pos = self._index.search(np.ascontiguousarray(queries, np.float32), asked)
        return _exclude_self(pos, sim, k, exclude, index_ids)


def recall_at_k(approximate: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of the exact top-k positions that the approximate top-k holds."""
    hits = [len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approximate, exact, strict=True)]
    return float(np.sum(hits) / exact.size)

"""Approximate similarity search (HNSW): its recall@10 against exact search, and
`astroclf similar --approximate` (exact search itself is tested in test_clip.py)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from astro_classifier.cli.app import app
from astro_classifier.inference.embeddings import (
    HNSWIndex,
    embedding_schema,
    recall_at_k,
    search,
)

pytest.importorskip("faiss", reason="approximate search needs the 'search' extra (faiss-cpu)")


def _clustered_unit_vectors(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """Vectors around a few hundred centres, as embeddings of object classes are: the hard
    case for a graph index is many near-ties inside a cluster."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + 0.35 * rng.standard_normal((n, dim)).astype(
        np.float32
    )
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_hnsw_recall_at_10_against_exact_search() -> None:
    x = _clustered_unit_vectors(10_000, 32, 100, seed=2)
    ids = np.arange(len(x)).astype(str)
    queries = x[:500]
    exact, _ = search(queries, x, 10, exclude=ids[:500], index_ids=ids)
    index = HNSWIndex(x)
    recalls = {}
    for ef in (16, 128):
        approx, sim = index.search(queries, 10, exclude=ids[:500], index_ids=ids, ef_search=ef)
        assert not np.any(approx == np.arange(500)[:, None]), "a query returned itself"
        assert np.all(np.diff(sim, axis=1) <= 1e-6)
        recalls[ef] = recall_at_k(approx, exact)
    # The default beam (128) is what `astroclf similar --approximate` uses.
    assert recalls[128] >= 0.95, recalls
    assert recalls[128] >= recalls[16], recalls


def test_recall_at_k_counts_shared_neighbours() -> None:
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    approx = np.array([[4, 3, 2, 9], [5, 6, 7, 8]])
    assert recall_at_k(approx, exact) == pytest.approx(7 / 8)


def test_similar_approximate_agrees_with_exact(tmp_path) -> None:
    x = _clustered_unit_vectors(2000, 16, 40, seed=3)
    ids = [f"obj{i}" for i in range(len(x))]
    table = pa.table(
        {
            "object_id": ids,
            "model": ["m 0"] * len(x),
            "modality": ["photometry"] * len(x),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), 16),
        },
        schema=embedding_schema(16),
    )
    emb = tmp_path / "emb.parquet"
    pq.write_table(table, emb)
    runner = CliRunner()
    rows = {}
    for mode in ("exact", "approximate"):
        out = tmp_path / f"{mode}.parquet"
        args = ["similar", "obj0,obj1,obj2", "--index", str(emb), "-k", "5", "-o", str(out)]
        result = runner.invoke(app, args + (["--approximate"] if mode == "approximate" else []))
        assert result.exit_code == 0, result.output
        assert ("HNSW" in result.output) == (mode == "approximate")
        rows[mode] = pq.read_table(out).to_pylist()
    assert len(rows["approximate"]) == 15
    assert all(r["object_id"] != r["query_id"] for r in rows["approximate"])
    # 2,000 vectors with the default beam: the graph search is exact in practice.
    assert [r["object_id"] for r in rows["approximate"]] == [r["object_id"] for r in rows["exact"]]


def _write_embeddings(path, ids, vectors, modality: str, model: str = "m 0") -> None:
    dim = vectors.shape[1]
    table = pa.table(
        {
            "object_id": ids,
            "model": [model] * len(ids),
            "modality": [modality] * len(ids),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
        },
        schema=embedding_schema(dim),
    )
    pq.write_table(table, path)


def test_cross_modal_search_keeps_the_objects_own_vector(tmp_path) -> None:
    """Light curves against spectra: each object's own spectrum is the answer hoped for."""
    rng = np.random.default_rng(4)
    spectra = _clustered_unit_vectors(300, 16, 10, seed=4)
    photometry = spectra + 0.02 * rng.standard_normal(spectra.shape).astype(np.float32)
    ids = [f"sn{i}" for i in range(300)]
    _write_embeddings(tmp_path / "spec.parquet", ids, spectra, "spectrum")
    _write_embeddings(tmp_path / "lc.parquet", ids[:20], photometry[:20], "photometry")
    out = tmp_path / "nn.parquet"
    args = ["similar", str(tmp_path / "lc.parquet"), "--index", str(tmp_path / "spec.parquet")]
    args += ["--query-modality", "photometry", "--modality", "spectrum", "-k", "3", "-o", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = pq.read_table(out).to_pylist()
    top = {r["query_id"]: r["object_id"] for r in rows if r["rank"] == 1}
    assert top == {i: i for i in ids[:20]}


def test_search_across_models_is_refused(tmp_path) -> None:
    x = _clustered_unit_vectors(50, 8, 5, seed=5)
    ids = [f"o{i}" for i in range(50)]
    _write_embeddings(tmp_path / "a.parquet", ids, x, "photometry", model="clip-a 0.1")
    _write_embeddings(tmp_path / "b.parquet", ids, x, "photometry", model="clip-b 0.1")
    result = CliRunner().invoke(
        app, ["similar", str(tmp_path / "a.parquet"), "--index", str(tmp_path / "b.parquet")]
    )
    assert result.exit_code != 0
    assert "not comparable" in result.output

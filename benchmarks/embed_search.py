"""Speed of `astroclf embed` and of exact cosine search (`astroclf similar`).

- search: ``--sizes`` unit vectors (default 10^5 and 10^6, ``--dim`` 64, float32) drawn
  around 1,000 random centres (embeddings cluster by kind of object; uniformly random vectors
  are the unrealistic worst case for a graph index) and ``--queries`` queries, top 10.
  Exact: :func:`astro_classifier.inference.embeddings.search` (numpy matrix products in
  blocks of 1,024 queries). Approximate: :class:`HNSWIndex` (FAISS HNSW, M 32,
  efConstruction 128): build time, ms per query at two beams, recall@10 against exact.
- embed (with ``--model``): objects/s of :func:`embed_objects` on the PLAsTiCC training light
  curves (first ``--objects``), one-object calls (bit-identical vectors) and 64-object calls.

Usage::

    python -m benchmarks.embed_search [--sizes 100000,1000000] [--model clip.onnx --objects 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def bench_search(n: int, dim: int, queries: int, k: int = 10, hnsw: bool = True) -> dict:
    from astro_classifier.inference.embeddings import HNSWIndex, recall_at_k, search

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((1000, dim), dtype=np.float32)
    index = centres[rng.integers(0, len(centres), n)]
    index += 0.35 * rng.standard_normal((n, dim), dtype=np.float32)
    index /= np.linalg.norm(index, axis=1, keepdims=True)
    q = index[:queries].copy()
    ids = np.arange(n).astype(str)
    search(q[:2], index, k)  # warm
    started = time.perf_counter()
    exact, _ = search(q, index, k, exclude=ids[:queries], index_ids=ids)
    seconds = time.perf_counter() - started
    out = {
        "vectors": n,
        "dim": dim,
        "queries": queries,
        "k": k,
        "exact_ms_per_query": 1e3 * seconds / queries,
        "index_mb": index.nbytes / 2**20,
    }
    if hnsw:
        started = time.perf_counter()
        graph = HNSWIndex(index)
        out["hnsw_build_s"] = time.perf_counter() - started
        for ef in (32, 128):
            graph.search(q[:2], k, ef_search=ef)  # warm
            started = time.perf_counter()
            approx, _ = graph.search(q, k, exclude=ids[:queries], index_ids=ids, ef_search=ef)
            out[f"hnsw_ef{ef}_ms_per_query"] = 1e3 * (time.perf_counter() - started) / queries
            out[f"hnsw_ef{ef}_recall_at_{k}"] = recall_at_k(approx, exact)
        out["speedup_ef128_vs_exact"] = out["exact_ms_per_query"] / out["hnsw_ef128_ms_per_query"]
    print(json.dumps(out), flush=True)
    return out


def bench_embed(model_path: str, objects: int) -> dict:
    from astro_classifier.formats.plasticc import read_plasticc
    from astro_classifier.inference.embeddings import embed_objects
    from astro_classifier.inference.model import LoadedModel

    data = Path(os.environ.get("ASTROCLF_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))
    folder = data / "lightcurves" / "plasticc"
    batch = read_plasticc(
        folder / "plasticc_train_lightcurves.csv.gz", folder / "plasticc_train_metadata.csv.gz"
    )
    batch = batch.select(np.arange(min(objects, len(batch))))
    loaded = LoadedModel.load(model_path, provider="cpu")
    out = {"model": loaded.metadata.name, "objects": len(batch)}
    for rows in (1, 64):
        started = time.perf_counter()
        embed_objects(batch, loaded, "fused", call_rows=rows)
        out[f"objects_per_s_call_rows_{rows}"] = len(batch) / (time.perf_counter() - started)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--no-hnsw", action="store_true", help="exact search only")
    parser.add_argument("--model", default=None)
    parser.add_argument("--objects", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    import platform

    import onnxruntime

    result: dict = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores",
        "versions": {"numpy": np.__version__, "onnxruntime": onnxruntime.__version__},
    }
    if not args.no_hnsw:
        import faiss

        result["versions"]["faiss"] = faiss.__version__
    result["search"] = [
        bench_search(int(n), args.dim, args.queries, hnsw=not args.no_hnsw)
        for n in args.sizes.split(",")
        if n
    ]
    if args.model:
        result["embed"] = bench_embed(args.model, args.objects)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()

"""Speed of `astroclf embed` and of exact cosine search (`astroclf similar`).

- search: ``--sizes`` random unit vectors (default 10^5 and 10^6, ``--dim`` 64, float32) and
  ``--queries`` queries, top 10, :func:`astro_classifier.inference.embeddings.search` (numpy
  matrix products in blocks of 1,024 queries); reports ms per query and the index's memory.
- embed (with ``--model``): objects/s of :func:`embed_objects` on the PLAsTiCC training light
  curves (first ``--objects``), one-object calls (bit-identical vectors) and 64-object calls.

Usage::

    python benchmarks/embed_search.py [--sizes 100000,1000000] [--model clip.onnx --objects 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))


def bench_search(n: int, dim: int, queries: int, k: int = 10) -> dict:
    from astro_classifier.inference.embeddings import search

    rng = np.random.default_rng(0)
    index = rng.standard_normal((n, dim), dtype=np.float32)
    index /= np.linalg.norm(index, axis=1, keepdims=True)
    q = index[:queries].copy()
    ids = np.arange(n).astype(str)
    search(q[:2], index, k)  # warm
    started = time.perf_counter()
    search(q, index, k, exclude=ids[:queries], index_ids=ids)
    seconds = time.perf_counter() - started
    return {
        "vectors": n,
        "dim": dim,
        "queries": queries,
        "k": k,
        "ms_per_query": 1e3 * seconds / queries,
        "index_mb": index.nbytes / 2**20,
    }


def bench_embed(model_path: str, objects: int) -> dict:
    from astro_classifier.data.plasticc import read_plasticc
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
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--model", default=None)
    parser.add_argument("--objects", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = {
        "search": [bench_search(int(n), args.dim, args.queries) for n in args.sizes.split(",") if n]
    }
    if args.model:
        result["embed"] = bench_embed(args.model, args.objects)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()

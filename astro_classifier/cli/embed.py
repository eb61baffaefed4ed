"""`astroclf embed` and `astroclf similar`: embeddings of a CLIP model, exact cosine search."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import typer
from rich.table import Table

from astro_classifier.cli.common import atomic_output, console, user_errors
from astro_classifier.core.errors import InputError
from astro_classifier.formats.registry import (
    FORMATS,
    attach_cutouts,
    read_light_curves,
    read_spectra_of,
)
from astro_classifier.inference.embeddings import (
    HNSWIndex,
    embed_objects,
    embedding_models,
    read_embeddings,
    search,
)
from astro_classifier.inference.model import LoadedModel

MODALITY_CHOICES = ("photometry", "metadata", "spectrum", "image", "fused")


def embed_command(
    inputs: list[Path] = typer.Argument(
        ..., help="Light-curve or alert files (every format `astroclf classify` reads)."
    ),
    output: Path = typer.Option(..., "-o", "--output", help="Parquet file to write."),
    model: str = typer.Option(
        ..., "--model", "-m", help="A multimodal (CLIP) .onnx file written by `astroclf export`."
    ),
    modality: str = typer.Option(
        "photometry",
        "--modality",
        help="Which embedding: a tower's (photometry, metadata, spectrum, image: the alert "
        "stamps) or the fused one (of every modality the object has).",
    ),
    format: str | None = typer.Option(None, "--format", "-f", help="Input format (detected)."),
    metadata: Path | None = typer.Option(
        None, "--metadata", help="Object table for PLAsTiCC-format or long-format light curves."
    ),
    provider: str = typer.Option("auto", help="ONNX Runtime provider: auto, cpu or cuda."),
    batch_size: int = typer.Option(512, min=1, help="Objects per ONNX Runtime call."),
) -> None:
    """Write one embedding row per object: object_id, model, modality, vector (a fixed-size
    list of float32, L2-normalised). The same object gets the same vector whatever else is
    in the file or the call."""
    if modality not in MODALITY_CHOICES:
        raise typer.BadParameter(
            f"expected one of {', '.join(MODALITY_CHOICES)}", param_hint="--modality"
        )
    if format is not None and format not in FORMATS:
        raise typer.BadParameter(f"unknown format {format!r}", param_hint="--format")
    with user_errors():
        loaded = LoadedModel.load(model, provider=provider)  # type: ignore[arg-type]
        batch = read_light_curves(inputs, format=format, metadata=metadata)
        if loaded.needs_images:  # stamps are decoded only for a model with an image tower
            attach_cutouts(batch, inputs, format, None, int(loaded.metadata.image_size or 63))
        spectra = None
        if loaded.metadata.modalities and "spectrum" in loaded.metadata.modalities:
            spectra = read_spectra_of(inputs, format)  # osc / slsne inputs hold spectra
        started = time.perf_counter()
        table, skipped = embed_objects(
            batch, loaded, modality, batch_size=batch_size, spectra=spectra
        )
        seconds = time.perf_counter() - started
        if table.num_rows == 0:
            raise InputError(", ".join(map(str, inputs)), "no object could be embedded")
        with atomic_output(output) as tmp:
            pq.write_table(table, tmp)
    rate = table.num_rows / seconds if seconds else float("nan")
    console.print(
        f"{table.num_rows} {modality} embeddings ({loaded.metadata.embedding_dim} dimensions) "
        f"of {len(batch)} objects by {loaded.metadata.name} in {seconds:.2f} s "
        f"({rate:,.0f} objects/s)"
        + (
            f"; skipped {skipped} without a usable point or without that modality"
            if skipped
            else ""
        )
        + f" -> {output}"
    )


def similar_command(
    query: str = typer.Argument(
        ...,
        help="Object ids (comma-separated), a text file of ids (one per line), or an "
        "embedding Parquet file whose vectors are the queries.",
    ),
    index: Path = typer.Option(..., "--index", help="Embedding Parquet file (astroclf embed)."),
    k: int = typer.Option(10, "-k", min=1, help="Neighbours per query."),
    modality: str | None = typer.Option(
        None, "--modality", help="Modality of the index to search, when it holds several."
    ),
    query_modality: str | None = typer.Option(
        None,
        "--query-modality",
        help="Modality of the query vectors (default: --modality). A different one is a "
        "cross-modal search, e.g. light curves (photometry) against spectra (spectrum); "
        "both files must come from the same model.",
    ),
    output: Path | None = typer.Option(
        None, "-o", "--output", help="Write the neighbours here (Parquet or .csv)."
    ),
    approximate: bool = typer.Option(
        False,
        "--approximate",
        help="Search an HNSW graph (FAISS, the 'search' extra) instead of every vector: "
        "for indexes of 10^5 vectors and more; builds the graph first.",
    ),
    ef_search: int = typer.Option(
        128, "--ef-search", min=1, help="With --approximate: search beam (recall vs speed)."
    ),
) -> None:
    """Nearest objects of each query by cosine similarity; a query never returns itself
    (except across modalities, where its own spectrum, say, is the hoped-for answer).
    Exact by default (every vector is compared); --approximate for large indexes."""
    with user_errors():
        ids, vectors = read_embeddings(index, modality)
        path = Path(query)
        cross_modal = query_modality is not None and query_modality != modality
        if path.is_file() and path.suffix == ".parquet":
            q_ids, q_vec = read_embeddings(path, query_modality or modality)
            if embedding_models(path) != embedding_models(index):
                raise InputError(
                    path,
                    f"embeddings of {embedding_models(path)}, the index {index} holds "
                    f"{embedding_models(index)}: vectors of different models are not comparable",
                )
        elif cross_modal:
            raise InputError(
                query,
                "a cross-modal search (--query-modality) needs the query vectors: an "
                "embedding Parquet file of that modality",
            )
        else:
            wanted = (
                [line.strip() for line in path.read_text().splitlines() if line.strip()]
                if path.is_file()
                else [x.strip() for x in query.split(",") if x.strip()]
            )
            where = {oid: i for i, oid in enumerate(ids)}
            missing = [w for w in wanted if w not in where]
            if missing:
                raise InputError(index, f"query ids not in the index: {missing[:5]}")
            q_ids = np.asarray(wanted, dtype=str)
            q_vec = vectors[[where[w] for w in wanted]]
        build = ""
        if approximate:
            started = time.perf_counter()
            graph = HNSWIndex(vectors)
            build = f", HNSW graph built in {time.perf_counter() - started:.1f} s"
        started = time.perf_counter()
        # Within one modality a query never returns itself; across modalities an object's own
        # other-modality vector is the answer hoped for (retrieval), so it is kept.
        exclude = None if cross_modal else q_ids
        if approximate:
            pos, sim = graph.search(q_vec, k, exclude=exclude, index_ids=ids, ef_search=ef_search)
        else:
            pos, sim = search(q_vec, vectors, k, exclude=exclude, index_ids=ids)
        seconds = time.perf_counter() - started
        found = pos >= 0  # HNSW may return fewer than k
    kk = pos.shape[1]
    flat = found.reshape(-1)
    result = pa.table(
        {
            "query_id": np.repeat(q_ids, kk)[flat],
            "rank": np.tile(np.arange(1, kk + 1), len(q_ids))[flat],
            "object_id": ids[pos.reshape(-1)[flat]],
            "similarity": sim.reshape(-1)[flat],
        }
    )
    if output is not None:
        with user_errors(), atomic_output(output) as tmp:
            if output.suffix == ".csv":
                import pyarrow.csv as pacsv

                pacsv.write_csv(result, tmp)
            else:
                pq.write_table(result, tmp)
    else:
        table = Table(title=f"{kk} nearest of {len(ids)} objects (cosine)")
        for name in ("query_id", "rank", "object_id", "similarity"):
            table.add_column(name)
        for row in result.to_pylist()[: 50 * kk]:
            table.add_row(
                row["query_id"], str(row["rank"]), row["object_id"], f"{row['similarity']:.4f}"
            )
        console.print(table)
    console.print(
        f"{len(q_ids)} queries against {len(ids)} vectors in {seconds * 1e3:.1f} ms "
        + ("(approximate, HNSW" + build + ")" if approximate else "(exact)")
        + (f" -> {output}" if output is not None else "")
    )

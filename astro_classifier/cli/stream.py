"""`astroclf replay` (and the Kafka worker's commands): need the `stream` extra."""

from __future__ import annotations

from pathlib import Path

import typer

from astro_classifier.cli.common import console, user_errors


def _require_kafka() -> None:
    try:
        import confluent_kafka  # noqa: F401
    except ImportError as exc:
        console.print(
            "[bold red]error:[/bold red] this command needs confluent-kafka: "
            "pip install 'astro-classifier[stream]'"
        )
        raise typer.Exit(1) from exc


def replay_command(
    files: list[Path] = typer.Argument(
        ..., help="Alert files: Avro containers, wire-format messages, Parquet/CSV light curves."
    ),
    topic: str = typer.Option(..., "--topic", "-t", help="Topic to produce to."),
    bootstrap_servers: str = typer.Option(
        "localhost:9092", "--bootstrap-servers", "-b", envvar="ASTROCLF_BOOTSTRAP_SERVERS"
    ),
    repeat: int = typer.Option(1, min=1, help="Produce the whole set this many times."),
    rate: float | None = typer.Option(
        None, min=0.001, help="Messages per second (default: as fast as possible)."
    ),
    metadata: Path | None = typer.Option(
        None, "--metadata", help="Object table for light-curve files."
    ),
    config: Path | None = typer.Option(
        None, "--config", help="Stream config whose Kafka properties (security, SASL) to use."
    ),
) -> None:
    """Produce real alert files to a Kafka topic: Avro containers and wire-format messages
    as they are (one message per file), light-curve files as one JSON message per object."""
    _require_kafka()
    from astro_classifier.stream.replay import replay

    conf = {"bootstrap.servers": bootstrap_servers}
    with user_errors(RuntimeError):
        if config is not None:
            from astro_classifier.stream.config import StreamSettings

            conf = StreamSettings.load(config, bootstrap_servers=bootstrap_servers).librdkafka()
        sent = replay(
            files,
            topic,
            conf,
            repeat=repeat,
            rate=rate,
            metadata=metadata,
            progress=lambda n: console.print(f"produced {n} messages", end="\r"),
        )
    console.print(f"produced {sent} messages to {topic}")

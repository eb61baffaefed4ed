"""`astroclf replay` and `astroclf stream` (the Kafka worker): they need the `stream` extra."""

from __future__ import annotations

from pathlib import Path

import typer

from astro_classifier.cli.common import console, print_error, user_errors
from astro_classifier.stream.replay import replay


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
    conf = {"bootstrap.servers": bootstrap_servers}
    with user_errors(RuntimeError):
        if config is not None:
            # the `stream` extra (pydantic-settings): imported only by the commands that use it
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


def _config_errors(exc: Exception) -> str:
    """A pydantic ValidationError as one line: ``field: problem; ...`` (never the values,
    which may be secrets)."""
    errors = getattr(exc, "errors", None)
    if errors is None:
        return " ".join(str(exc).split())
    parts = []
    for error in errors(include_input=False, include_url=False):
        where = ".".join(str(part) for part in error["loc"]) or "config"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def stream_command(
    config: Path | None = typer.Option(
        None,
        "--config",
        "-c",
        help="Stream config (YAML). Without it every setting comes from ASTROCLF_* variables.",
    ),
    metrics_port: int | None = typer.Option(
        None,
        "--metrics-port",
        min=0,
        max=65535,
        help="Port of /metrics, /healthz, /ready (overrides the config; 0 = any free port).",
    ),
    log_level: str | None = typer.Option(
        None, "--log-level", help="DEBUG, INFO, WARNING or ERROR (overrides the config)."
    ),
) -> None:
    """Run the Kafka worker: consume alerts, classify them, produce classifications.

    Settings: the YAML file of --config (examples: configs/stream_ztf.yaml,
    configs/stream_rubin.yaml); every field can be overridden by an environment
    variable ASTROCLF_<FIELD> (the environment wins over the file, and the
    options here win over both):

      ASTROCLF_BOOTSTRAP_SERVERS=kafka-1:9092
      ASTROCLF_INPUT_TOPICS='["ztf-alerts"]'      JSON for lists and maps
      ASTROCLF_KAFKA__SASL_MECHANISM=PLAIN        __ descends into a map
      ASTROCLF_KAFKA_SECRETS__SASL_PASSWORD=...   secrets: never logged

    Logs: one JSON object per line on stderr. SIGTERM or Ctrl-C finishes the
    batches in hand (decode, classification and delivery of successive
    micro-batches overlap; ASTROCLF_PIPELINE=false runs them one after another),
    commits and exits 0 (1 if deliveries are stuck past stop_timeout_s). Messages that cannot be decoded or classified go to the
    dead-letter topic; outages of Kafka or the Schema Registry are retried;
    other failures (a bug, a model error) stop the worker with exit 1 after
    max_consecutive_failures batches. Unknown ASTROCLF_* variables are refused.
    """
    _require_kafka()
    # the `stream` extra (confluent_kafka, pydantic-settings, prometheus-client): imported only
    # when the worker runs, so that `astroclf` works without it
    import yaml
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from astro_classifier.stream.config import StreamSettings
    from astro_classifier.stream.worker import StreamWorker

    overrides: dict[str, object] = {}
    if metrics_port is not None:
        overrides["metrics_port"] = metrics_port
    if log_level is not None:
        overrides["log_level"] = log_level.upper()
    where = str(config) if config is not None else "environment"
    try:
        with user_errors():
            settings = StreamSettings.load(config, **overrides)
    except (ValidationError, SettingsError, ValueError, yaml.YAMLError) as exc:
        print_error(f"{where}: invalid stream config: {_config_errors(exc)}")
        raise typer.Exit(1) from exc
    raise typer.Exit(StreamWorker(settings).run())

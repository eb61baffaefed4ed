"""Settings of the Kafka worker: a YAML file, every field overridable by ``ASTROCLF_*``.

Environment variables win over the file: ``ASTROCLF_BOOTSTRAP_SERVERS``,
``ASTROCLF_INPUT_TOPICS='["ztf"]'`` (JSON for lists and maps), ``ASTROCLF_KAFKA__SASL_MECHANISM``
(``__`` descends into maps). Secrets (``kafka_secrets``, e.g. ``sasl.password``) are
``SecretStr``: they reach librdkafka but never a log line or ``repr``.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

InputFormat = Literal["ztf-avro", "rubin-avro", "rubin-wire", "json"]


class StreamSettings(BaseSettings):
    """Everything `astroclf stream` needs; see configs/stream_*.yaml for examples."""

    model_config = SettingsConfigDict(
        env_prefix="ASTROCLF_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    # -- Kafka ----------------------------------------------------------------------------
    bootstrap_servers: str = Field("localhost:9092", description="Kafka bootstrap servers")
    kafka: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="extra librdkafka properties for consumer and producer (security.protocol, "
        "sasl.mechanism, ssl.ca.location, ...)",
    )
    kafka_secrets: dict[str, SecretStr] = Field(
        default_factory=dict, description="librdkafka properties that are secrets (sasl.password)"
    )
    input_topics: list[str] = Field(..., min_length=1)
    group_id: str = "astroclf"
    output_topic: str
    dead_letter_topic: str
    session_timeout_ms: int = Field(45000, ge=1000)
    # -- messages -------------------------------------------------------------------------
    input_format: InputFormat = "ztf-avro"
    schema_dir: Path | None = Field(
        None, description="Rubin schema folder (<major>/<minor>/*.avsc) for rubin-wire"
    )
    schema_registry_url: str | None = Field(
        None, description="Confluent Schema Registry for rubin-wire (instead of schema_dir)"
    )
    output_format: Literal["avro", "json"] = "avro"
    # -- model ----------------------------------------------------------------------------
    model: str = Field("atat-lsst", description="shipped model name or path to an .onnx file")
    provider: Literal["auto", "cpu", "cuda"] = "auto"
    # -- processing -----------------------------------------------------------------------
    batch_size: int = Field(500, ge=1, description="most messages per micro-batch")
    max_wait_ms: int = Field(200, ge=1, description="longest wait to fill a micro-batch")
    delivery: Literal["at-least-once", "exactly-once"] = "at-least-once"
    transactional_id: str | None = Field(
        None, description="exactly-once producer id (default: astroclf-<group>-<host>)"
    )
    # -- operations -----------------------------------------------------------------------
    metrics_host: str = "0.0.0.0"
    metrics_port: int | None = Field(9108, description="Prometheus /metrics, /healthz, /ready")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @model_validator(mode="after")
    def _schema_source(self) -> StreamSettings:
        if self.input_format == "rubin-wire" and not (self.schema_dir or self.schema_registry_url):
            raise ValueError("input_format rubin-wire needs schema_dir or schema_registry_url")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Precedence: explicit arguments, then environment, then the YAML file.
        yaml_file = init_settings.init_kwargs.pop("_yaml_file", None)  # type: ignore[attr-defined]
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if yaml_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_file))
        return tuple(sources)

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> StreamSettings:
        """Settings from a YAML file (optional), the environment, and keyword overrides."""
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{path}: stream config not found")
        return cls(_yaml_file=path, **overrides)  # type: ignore[call-arg]

    def effective_transactional_id(self) -> str:
        return self.transactional_id or f"astroclf-{self.group_id}-{socket.gethostname()}"

    def librdkafka(self) -> dict[str, str]:
        """Common librdkafka properties, secrets included (never log the result)."""
        # librdkafka names use dots; keys from environment variables arrive with underscores.
        conf = {"bootstrap.servers": self.bootstrap_servers}
        conf.update({k.replace("_", "."): _librdkafka_value(v) for k, v in self.kafka.items()})
        conf.update(
            {k.replace("_", "."): v.get_secret_value() for k, v in self.kafka_secrets.items()}
        )
        return conf

    def redacted(self) -> dict[str, Any]:
        """The settings as plain data for logs: secrets shown as '**********'."""
        return self.model_dump(mode="json")


def _librdkafka_value(value: str | int | float | bool) -> str:
    """YAML gives numbers and booleans; librdkafka wants strings ('true', not 'True')."""
    return str(value).lower() if isinstance(value, bool) else str(value)

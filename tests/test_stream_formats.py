"""`astroclf stream` on input formats other than ZTF Avro containers, through a real broker.

ZTF alerts as Parquet rows (the layout of Fink's and ALeRCE's data lakes: one row per alert,
``objectId``, ``candid``, ``candidate`` struct, ``prv_candidates`` list, broker columns, no
cutouts), built in ``tmp`` from real Fink-published alerts, replayed by
:func:`astro_classifier.stream.replay.replay` as one single-row Parquet file per message and
classified by a worker with ``input_format: ztf-parquet``. Expected ids are read from the
message bytes with pyarrow, independently of astroclf's reader.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import fastavro
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.kafka_broker import require_stream_extra
from tests.test_stream_worker import (
    SIGTERM_LIMIT_S,
    AlertIds,
    all_committed,
    check_dead_letters,
    check_exactly_one_each,
    check_output_records,
    collect,
    new_topics,
    produce,
    wait_until,
    workers,  # noqa: F401  (fixture)
    write_config,
)

require_stream_extra()
pytestmark = pytest.mark.kafka

CUTOUTS = ("cutoutScience", "cutoutTemplate", "cutoutDifference")
N_ALERTS = 40


def ztf_parquet_lake(shared_data: Path, path: Path, n: int = N_ALERTS) -> Path:
    """``n`` real ZTF alerts (Fink, schema 4.02) as Parquet rows: no cutouts, two broker
    columns."""
    rows = []
    for source in sorted((shared_data / "alerts/ztf/fink-v4.02").glob("*.avro"))[:n]:
        with source.open("rb") as stream:
            (record,) = list(fastavro.reader(stream))
        row = {k: v for k, v in record.items() if k not in CUTOUTS}
        row["cdsxmatch"] = "Unknown"  # broker columns: in the rows, not read
        row["rf_snia_vs_nonia"] = 0.1
        rows.append(row)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def parquet_alert_ids(value: bytes) -> AlertIds:
    """(objectId, candidate.candid) of each row of a Parquet message."""
    table = pq.read_table(pa.BufferReader(value), columns=["objectId", "candidate"])
    return [(row["objectId"], str(row["candidate"]["candid"])) for row in table.to_pylist()]


def test_ztf_parquet_rows_as_a_stream_one_classification_per_alert(
    kafka_bootstrap: str,
    shared_data: Path,
    tmp_path: Path,
    workers,  # noqa: F811
) -> None:
    from astro_classifier.stream.replay import file_messages, replay

    bootstrap = kafka_bootstrap
    lake = ztf_parquet_lake(shared_data, tmp_path / "lake.parquet")
    messages = file_messages(lake)
    assert len(messages) == N_ALERTS  # one single-row Parquet file per alert
    assert all(value.startswith(b"PAR1") for _, value in messages)

    topics = new_topics(bootstrap, input_partitions=2)
    config = write_config(
        tmp_path / "stream.yaml",
        bootstrap,
        topics,
        input_format="ztf-parquet",
        model="atat-ztf",
    )
    worker = workers(config, tmp_path / "worker.log").wait_ready()
    bad = [(b"not-parquet", b"PAR1 not really a Parquet file", [])]
    conf = {"bootstrap.servers": bootstrap}
    assert replay([lake], topics.input, conf) == N_ALERTS
    produce(bootstrap, topics.input, bad)
    wait_until(lambda: all_committed(bootstrap, topics), 60, "every input offset committed")
    code, seconds = worker.terminate()
    assert code == 0 and seconds < SIGTERM_LIMIT_S

    outcome = collect(bootstrap, topics, parquet_alert_ids, {v for _, v, _ in bad})
    assert len(outcome.expected) == N_ALERTS
    assert sum(sum(c.values()) for c in outcome.expected.values()) == N_ALERTS
    check_exactly_one_each(outcome)  # alert_id == candidate.candid, once per alert
    check_output_records(outcome, topics, "atat-ztf")
    check_dead_letters(outcome, topics)
    classified = Counter(
        alert for per_message in outcome.classified().values() for alert in per_message
    )
    expected = Counter(parquet_alert_ids(v)[0] for _, v in messages)
    assert classified == expected

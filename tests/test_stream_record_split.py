"""A container with good and bad alert records: the good ones are classified, each bad one
is dead-lettered alone (a single-record container with its index), never the whole message."""

from __future__ import annotations

import io
import json
from pathlib import Path

import fastavro
import pytest

from tests.kafka_broker import require_stream_extra

require_stream_extra()

from tests.test_stream_units import FakeMessage  # noqa: E402


@pytest.fixture(scope="module")
def ztf_model():
    from astro_classifier.inference.model import LoadedModel

    return LoadedModel.load("atat-ztf", "cpu")


def _records(shared_data: Path, n: int) -> tuple[dict, list[dict], list[bytes]]:
    """(writer schema, full records, container bytes) of ``n`` real ZTF alerts."""
    files = sorted((shared_data / "alerts" / "ztf" / "fink-v3.3").glob("*.avro"))[:n]
    schema, records = None, []
    for path in files:
        reader = fastavro.reader(io.BytesIO(path.read_bytes()))
        schema = schema or reader.writer_schema
        records += list(reader)
    return schema, records, [path.read_bytes() for path in files]


def _container(schema: dict, records: list[dict]) -> bytes:
    sink = io.BytesIO()
    fastavro.writer(sink, fastavro.parse_schema(schema), records)
    return sink.getvalue()


def _mixed(shared_data: Path, bad: tuple[int, ...]) -> tuple[bytes, list[dict], bytes]:
    """(container of three alerts whose records ``bad`` have fid=7, its records, one good
    single-alert message)."""
    schema, records, singles = _records(shared_data, 4)
    for k in bad:
        records[k]["candidate"]["fid"] = 7  # not 1, 2 or 3: the conversion refuses it
    return _container(schema, records[:3]), records[:3], singles[3]


def _candids(container: bytes) -> list[int]:
    return [r["candid"] for r in fastavro.reader(io.BytesIO(container))]


def _check_split(result, records: list[dict], container: bytes, single: bytes) -> None:
    from astro_classifier.stream.batch import H_RECORD_COUNT, H_RECORD_INDEX

    got = [
        (json.loads(o.value)["sourceOffset"], json.loads(o.value)["alertId"])
        for o in result.outputs
    ]
    single_candid = _candids(single)[0]
    assert got == [
        (5, str(records[0]["candid"])),
        (5, str(records[2]["candid"])),
        (6, str(single_candid)),
    ]
    assert len(result.dead_letters) == 1
    dead = result.dead_letters[0]
    assert dead.message.offset() == 5 and dead.error_class == "InputError"
    assert dead.key() == b"mixed" and not dead.truncated
    assert "fid=7" in dead.error_message and "alerts[0]@5" in dead.error_message
    value = dead.value()
    assert value != container
    reader = fastavro.reader(io.BytesIO(value))  # a valid container, the same writer schema
    assert reader.writer_schema == fastavro.reader(io.BytesIO(container)).writer_schema
    alone = list(reader)
    assert len(alone) == 1
    assert alone[0]["candid"] == records[1]["candid"]
    assert alone[0]["candidate"]["fid"] == 7
    headers = dict(dead.headers())
    assert headers[H_RECORD_INDEX] == b"1"
    assert headers[H_RECORD_COUNT] == b"3"
    assert headers["trace"] == b"t-9"  # the input's own headers are kept
    assert headers["astroclf.source.offset"] == b"5"


def test_a_bad_record_is_dead_lettered_alone_and_the_good_ones_classified(
    ztf_model, shared_data: Path
) -> None:
    from astro_classifier.formats.registry import PartialDecode, decode_messages
    from astro_classifier.stream.batch import BatchProcessor

    container, records, single = _mixed(shared_data, bad=(1,))
    results = decode_messages(
        [(container, "alerts[0]@5"), (single, "alerts[0]@6")], "ztf-avro", None
    )
    assert isinstance(results[0], PartialDecode)
    assert list(results[0].batch.alert_id) == [str(records[0]["candid"]), str(records[2]["candid"])]
    assert [e.index for e in results[0].record_errors] == [1]
    assert results[0].records == 3

    messages = [
        FakeMessage(container, 5, key=b"mixed", headers=[("trace", b"t-9")]),
        FakeMessage(single, 6, key=b"single"),
    ]
    result = BatchProcessor(ztf_model, "ztf-avro", "json").process(messages)
    _check_split(result, records, container, single)


def test_the_decode_pool_splits_a_container_the_same_way(ztf_model, shared_data: Path) -> None:
    from astro_classifier.stream.batch import BatchProcessor

    container, records, single = _mixed(shared_data, bad=(1,))
    messages = [
        FakeMessage(container, 5, key=b"mixed", headers=[("trace", b"t-9")]),
        FakeMessage(single, 6, key=b"single"),
    ]
    processor = BatchProcessor(ztf_model, "ztf-avro", "json", decode_workers=1).start()
    try:
        result = processor.process(messages)
    finally:
        processor.close()
    _check_split(result, records, container, single)


def test_a_container_whose_records_are_all_bad_is_dead_lettered_whole(
    ztf_model, shared_data: Path
) -> None:
    from astro_classifier.stream.batch import H_RECORD_INDEX, BatchProcessor

    container, _records_, single = _mixed(shared_data, bad=(0, 1, 2))
    result = BatchProcessor(ztf_model, "ztf-avro", "json").process(
        [FakeMessage(container, 5, key=b"mixed"), FakeMessage(single, 6)]
    )
    assert [json.loads(o.value)["sourceOffset"] for o in result.outputs] == [6]
    assert len(result.dead_letters) == 1
    dead = result.dead_letters[0]
    assert dead.value() == container  # the original bytes, as before
    assert H_RECORD_INDEX not in dict(dead.headers())
    assert "fid=7" in dead.error_message


def test_a_corrupt_container_is_dead_lettered_whole(ztf_model, shared_data: Path) -> None:
    from astro_classifier.stream.batch import H_RECORD_INDEX, BatchProcessor

    container, _records_, _single = _mixed(shared_data, bad=(1,))
    broken = container[: len(container) // 2]
    result = BatchProcessor(ztf_model, "ztf-avro", "json").process([FakeMessage(broken, 5)])
    assert not result.outputs
    assert [d.value() for d in result.dead_letters] == [broken]
    assert H_RECORD_INDEX not in dict(result.dead_letters[0].headers())


def test_a_record_dead_letter_is_cut_and_marked_by_its_own_size(shared_data: Path) -> None:
    from astro_classifier.formats.registry import decode_messages
    from astro_classifier.stream.batch import H_TRUNCATED, record_dead_letters

    container, _records_, _single = _mixed(shared_data, bad=(1,))
    (partial,) = decode_messages([(container, "alerts[0]@5")], "ztf-avro", None)
    (dead,) = record_dead_letters(FakeMessage(container, 5), partial)
    alone = partial.record_errors[0].container
    assert dead.full_value() == alone
    dead.max_value_bytes = 100
    assert dead.truncated and dead.value() == alone[:100]
    assert dict(dead.headers())[H_TRUNCATED] == str(len(alone)).encode()


def test_with_stamps_a_container_is_split_too(shared_data: Path) -> None:
    """The path of models with an image tower (cutout_size): same split, stamps aligned."""
    from astro_classifier.formats.registry import PartialDecode, decode_messages

    container, records, _single = _mixed(shared_data, bad=(1,))
    (result,) = decode_messages([(container, "alerts[0]@5")], "ztf-avro", None, cutout_size=63)
    assert isinstance(result, PartialDecode)
    assert list(result.batch.alert_id) == [str(records[0]["candid"]), str(records[2]["candid"])]
    assert len(result.batch.cutouts.images) == 2
    assert [e.index for e in result.record_errors] == [1]
    assert _candids(result.record_errors[0].container) == [records[1]["candid"]]


def test_delivery_plans_one_dead_letter_per_bad_record(ztf_model, shared_data: Path) -> None:
    from astro_classifier.stream.batch import BatchProcessor
    from astro_classifier.stream.delivery import AtLeastOnceDelivery

    container, records, single = _mixed(shared_data, bad=(0, 2))
    result = BatchProcessor(ztf_model, "ztf-avro", "json").process(
        [FakeMessage(container, 5, key=b"mixed")]
    )
    assert len(result.outputs) == 1 and len(result.dead_letters) == 2
    delivery = AtLeastOnceDelivery(None, None, output_topic="out", dead_letter_topic="dlq")
    items = delivery.plan(result)
    dead = [i for i in items if i.topic == "dlq"]
    assert [_candids(i.value) for i in dead] == [[records[0]["candid"]], [records[2]["candid"]]]
    assert [dict(i.headers)["astroclf.record.index"] for i in dead] == [b"0", b"2"]


def test_a_too_large_output_of_a_split_container_dead_letters_its_message(
    ztf_model, shared_data: Path
) -> None:
    """A record dead letter carries one record, not the message: an output of a good record
    of the same message that is too large must still dead-letter its input message."""
    from astro_classifier.stream.batch import MESSAGE_TOO_LARGE, BatchProcessor
    from astro_classifier.stream.delivery import AtLeastOnceDelivery

    container, _records_, _single = _mixed(shared_data, bad=(1,))
    result = BatchProcessor(ztf_model, "ztf-avro", "json").process([FakeMessage(container, 5)])
    result.outputs[0].value += b" " * 5000
    delivery = AtLeastOnceDelivery(
        None, None, output_topic="out", dead_letter_topic="dlq", max_message_bytes=4000
    )
    items = delivery.plan(result)
    assert sum(i.topic == "out" for i in items) == 1
    dead = [(i.dead.error_class, i.dead.record_index) for i in items if i.dead is not None]
    assert sorted(dead, key=str) == sorted([(MESSAGE_TOO_LARGE, None), ("InputError", 1)], key=str)

"""The faster ZTF decoding gives exactly what the previous code gave, on every real alert.

- Avro records: the compiled record readers of ``alerts/avro.py`` against
  ``fastavro.reader`` with the same (projected) reader schema, value for value, float bits,
  types and key order included;
- batches: ``_records_to_batch`` (columns built one field at a time) against the previous
  implementation (a loop over every point and field), kept below as ``_reference_batch``.
"""

from __future__ import annotations

import copy
import io
import json
import struct
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pytest

from astro_classifier.core.errors import InputError
from astro_classifier.core.lightcurve import SOLAR_SYSTEM, LightCurveBatch, as_id_array
from astro_classifier.core.units import (
    ab_mag_to_njy,
    mjd_from_jd,
    ztf_difference_mag_to_njy,
    ztf_forced_flux_to_njy,
)
from astro_classifier.formats import avro, ztf


def _files(shared_data: Path) -> list[Path]:
    files = sorted((shared_data / "alerts" / "ztf").rglob("*.avro"))
    assert len(files) >= 600
    return files


def _canonical(value: Any) -> Any:
    """A value with every type, key order and float bit pattern made comparable with ==."""
    if isinstance(value, dict):
        return ("dict", tuple((k, _canonical(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("list", tuple(_canonical(v) for v in value))
    if isinstance(value, float):
        return ("float", struct.pack("<d", value))
    return (type(value).__name__, value)


def _fastavro_records(data: bytes, fields: avro.Projection | None) -> list[Any]:
    meta, _ = avro._read_header(data)
    writer = fastavro.parse_schema(json.loads(meta["avro.schema"]))
    reader = None if fields is None else avro.project_schema(writer, fields)
    return list(fastavro.reader(io.BytesIO(data), reader_schema=reader))


@pytest.fixture(scope="module")
def messages(shared_data: Path) -> list[tuple[Path, bytes]]:
    return [(path, path.read_bytes()) for path in _files(shared_data)]


@pytest.mark.parametrize("fields", [ztf.AVRO_FIELDS, None], ids=["projected", "whole"])
def test_compiled_records_equal_fastavro(messages, fields):
    avro.clear_schema_cache()
    for path, data in messages:
        _, records = avro.decode_avro_container(data, str(path), ztf.EXPECTED, fields)
        assert _canonical(records) == _canonical(_fastavro_records(data, fields)), path
    entries = list(avro._CACHE.values())
    assert entries and all(e.record_reader is not None for e in entries)  # no fastavro fallback
    assert all("cutoutScience" not in r for r in records) or fields is None


def test_non_canonical_varints_fall_back_field_by_field():
    """A varint written with more bytes than needed is valid Avro: the regular expression
    that steps over a run of fields does not match it, the field-by-field code reads it."""
    schema = {
        "type": "record",
        "name": "r",
        "fields": [
            {"name": "a", "type": ["float", "null"]},
            {"name": "b", "type": ["int", "null"]},
            {"name": "c", "type": "long"},
            {"name": "s", "type": ["null", "string"]},
        ],
    }
    buffer = io.BytesIO()
    fastavro.writer(buffer, schema, [{"a": None, "b": 3, "c": 7, "s": "x"}], codec="null")
    data = buffer.getvalue()
    body = bytes([0x02, 0x00, 0x06, 0x0E, 0x02, 0x02]) + b"x"  # a=null, b=3, c=7, s="x"
    assert data.count(body) == 1
    odd = data.replace(body, bytes([0x82, 0x00, 0x00, 0x06, 0x0E, 0x02, 0x02]) + b"x")
    # the block's byte size grows by one
    meta, end = avro._read_header(data)
    head = data[: end + avro.SYNC_SIZE]
    count_size = data[end + avro.SYNC_SIZE : end + avro.SYNC_SIZE + 2]
    assert count_size == bytes([0x02, 2 * len(body)])
    odd = head + bytes([0x02, 2 * (len(body) + 1)]) + odd[len(head) + 2 :]
    for fields in (("c", "s"), None):
        avro.clear_schema_cache()
        _, records = avro.decode_avro_container(odd, "odd", "e", fields)
        assert records == _fastavro_records(odd, fields)
        assert records[0]["c"] == 7 and records[0]["s"] == "x"


def test_truncated_and_corrupt_messages_raise_input_error(messages):
    avro.clear_schema_cache()
    path, data = messages[0]
    ztf.decode_ztf_avro_bytes(data, "ok")  # the schema is cached: the compiled reader runs
    for cut in (len(data) - 17, len(data) // 2, 20_000, 9_000):
        with pytest.raises(InputError):
            ztf.decode_ztf_avro_bytes(data[:cut], "cut")
    meta, end = avro._read_header(data)
    body = end + avro.SYNC_SIZE + 6
    for offset in (0, 1, 50, 500):  # a union index out of range, or garbage that overruns
        bad = bytearray(data)
        bad[body + offset] = 0x7F
        try:
            records = ztf.decode_ztf_avro_bytes(bytes(bad), "bad")
        except InputError:
            continue
        assert _canonical(records) == _canonical(_fastavro_records(bytes(bad), ztf.AVRO_FIELDS))


# -- batches -------------------------------------------------------------------------------
def _reference_batch(records: list[dict[str, Any]], source: str) -> tuple[LightCurveBatch, int]:
    """The previous ``_records_to_batch``: a Python loop over every point and field."""
    columns: dict[str, list[Any]] = {name: [] for name in ztf.POINT_FIELDS}
    point_alert: list[int] = []
    point_kind: list[int] = []
    object_ids, alert_ids, ra, dec, solar_system = [], [], [], [], []
    no_flux_info = 0
    for alert_index, record in enumerate(records):
        ztf._check_alert(record, source)
        candidate = record["candidate"]
        object_ids.append(record["objectId"])
        candid = record.get("candid")
        candid = candidate.get("candid") if candid is None else candid
        alert_ids.append(None if candid is None else str(candid))
        ra.append(ztf._float(candidate.get("ra")))
        dec.append(ztf._float(candidate.get("dec")))
        solar_system.append(ztf._solar_system(candidate))
        history = [candidate, *(record.get("prv_candidates") or [])]
        forced = record.get("fp_hists") or []
        points = [(point, ztf._point_kind(point)) for point in history]
        points += [(point, ztf._FORCED) for point in forced]
        for point, kind in points:
            if kind is None:
                no_flux_info += 1
                continue
            if point.get("jd") is None or point.get("fid") not in ztf.ZTF_FID_BANDS:
                raise InputError(
                    source,
                    f"alert {record['objectId']} candid={candid}: a point has "
                    f"jd={point.get('jd')!r}, fid={point.get('fid')!r}; expected a jd and fid 1 "
                    "(g), 2 (r) or 3 (i)",
                )
            point_alert.append(alert_index)
            point_kind.append(kind)
            for name in ztf.POINT_FIELDS:
                columns[name].append(point.get(name))

    def floats(values: list[Any], mask: np.ndarray) -> np.ndarray:
        return np.array(
            [np.nan if v is None else v for v, m in zip(values, mask, strict=True) if m],
            np.float64,
        )

    alert = np.asarray(point_alert, dtype=np.int64)
    kind = np.asarray(point_kind, dtype=np.int8)
    jd = np.asarray(columns["jd"], dtype=np.float64)
    pid = np.array([-1 if p is None else p for p in columns["pid"]], dtype=np.int64)
    pid_jd = np.where(
        pid >= 0, ztf.PID_NIGHT_ZERO_JD + pid // 10**9 + (pid // 10**4 % 10**5) / 1e5, np.nan
    )
    repair = np.abs(jd - pid_jd) > ztf.JD_REPAIR_TOLERANCE_DAYS
    time = mjd_from_jd(np.where(repair, pid_jd, jd))
    band = np.array([ztf.ZTF_FID_BANDS[f] for f in columns["fid"]], dtype=np.int8)
    flux = np.full(len(kind), np.nan)
    flux_err = np.full(len(kind), np.nan)
    is_detection = kind == ztf._DETECTION
    flux[is_detection], flux_err[is_detection] = ztf_difference_mag_to_njy(
        floats(columns["magpsf"], is_detection),
        floats(columns["sigmapsf"], is_detection),
        np.asarray(columns["isdiffpos"], dtype=object)[is_detection].astype(str),
    )
    is_limit = kind == ztf._NON_DETECTION
    limit_flux, _ = ab_mag_to_njy(floats(columns["diffmaglim"], is_limit), 0.0)
    flux[is_limit], flux_err[is_limit] = 0.0, limit_flux / ztf.LIMIT_SIGMA
    is_forced = kind == ztf._FORCED
    forced_flux = floats(columns["forcediffimflux"], is_forced)
    forced_err = floats(columns["forcediffimfluxunc"], is_forced)
    forced_zp = floats(columns["magzpsci"], is_forced)
    flux[is_forced], flux_err[is_forced] = ztf_forced_flux_to_njy(
        forced_flux, forced_err, forced_zp
    )
    sentinel = np.zeros(len(kind), dtype=bool)
    sentinel[is_forced] = (
        (forced_flux == ztf.FORCED_PHOT_SENTINEL)
        | ~np.isfinite(forced_flux)
        | ~(forced_err > 0)
        | ~np.isfinite(forced_zp)
    )
    same_epoch = np.zeros(len(kind), dtype=bool)
    for alert_index in np.unique(alert[is_forced]):
        detection_times = time[(alert == alert_index) & is_detection]
        here = np.flatnonzero(is_forced & (alert == alert_index))
        distance = np.abs(time[here, None] - detection_times[None, :])
        same_epoch[here] = (distance < ztf.SAME_EPOCH_DAYS).any(axis=1)
    same_epoch &= ~sentinel
    keep = ~sentinel & ~same_epoch
    order = np.flatnonzero(keep)
    order = order[np.lexsort((kind[order], band[order], time[order], alert[order]))]
    same_as_previous = (
        (alert[order][1:] == alert[order][:-1])
        & (time[order][1:] == time[order][:-1])
        & (band[order][1:] == band[order][:-1])
    )
    order = order[np.concatenate([[True], ~same_as_previous])] if len(order) else order
    counts = np.bincount(alert[order], minlength=len(records))
    dropped = {
        ztf.DROP_NO_MAGNITUDE: no_flux_info,
        ztf.DROP_FORCED_NO_MEASUREMENT: int(sentinel.sum()),
        ztf.DROP_SAME_EPOCH: int(same_epoch.sum()) + int(same_as_previous.sum()),
    }
    batch = LightCurveBatch(
        object_id=as_id_array(object_ids),
        offsets=np.concatenate([[0], np.cumsum(counts)]),
        time=time[order],
        band=band[order],
        flux=flux[order],
        flux_err=flux_err[order],
        detected=kind[order] == ztf._DETECTION,
        metadata={
            "ra": np.asarray(ra, np.float64),
            "dec": np.asarray(dec, np.float64),
            SOLAR_SYSTEM: np.asarray(solar_system, np.float64),
        },
        alert_id=np.asarray(alert_ids, dtype=object),
        dropped={reason: n for reason, n in dropped.items() if n},
    )
    return batch, int(repair[order].sum())


def _assert_same(got: tuple[LightCurveBatch, int], want: tuple[LightCurveBatch, int]) -> None:
    (a, repaired_a), (b, repaired_b) = got, want
    assert repaired_a == repaired_b
    for name in ("offsets", "time", "band", "flux", "flux_err", "detected"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), name
    assert a.object_id.tolist() == b.object_id.tolist()
    assert a.alert_id.tolist() == b.alert_id.tolist()
    assert list(a.metadata) == list(b.metadata)
    for key in a.metadata:
        assert a.metadata[key].tobytes() == b.metadata[key].tobytes(), key
    assert a.dropped == b.dropped and list(a.dropped) == list(b.dropped)


@pytest.fixture(scope="module")
def all_records(messages) -> dict[str, list[list[dict]]]:
    """Records of every file by folder, decoded as the reader does."""
    out: dict[str, list[list[dict]]] = {}
    for path, data in messages:
        out.setdefault(path.parent.name, []).append(ztf.decode_ztf_avro_bytes(data, str(path)))
    return out


def test_batches_equal_reference_on_every_alert(all_records):
    n = 0
    for folder, files in all_records.items():
        for records in files:  # one message at a time, as the stream worker decodes them
            _assert_same(ztf._records_to_batch(records, "m"), _reference_batch(records, "m"))
            n += 1
        together = [r for records in files for r in records]  # many alerts in one batch
        _assert_same(ztf._records_to_batch(together, folder), _reference_batch(together, folder))
    assert n >= 600


def _with_forced(records: list[dict]) -> list[dict]:
    """Alerts made to carry every forced-photometry and history case."""
    out = []
    for k, record in enumerate(records):
        record = copy.deepcopy(record)
        history = record.get("prv_candidates") or []
        candidate = record["candidate"]
        base = {name: candidate.get(name) for name in ztf.POINT_FIELDS}
        forced = []
        for j, (flux, err, zp) in enumerate(
            [
                (120.0, 10.0, 26.0),
                (-99999.0, 10.0, 26.0),
                (50.0, 0.0, 26.0),
                (50.0, 5.0, None),
                (float("nan"), 5.0, 26.0),
                (30.0, 3.0, 25.5),
            ]
        ):
            point = {**base, "magpsf": None, "forcediffimflux": flux}
            point.update(forcediffimfluxunc=err, magzpsci=zp)
            point["jd"] = base["jd"] - (0 if j == 0 else j + 0.25)  # j == 0: the detection's epoch
            point["pid"] = None if j == 5 else base["pid"]
            forced.append(point)
        record["fp_hists"] = forced
        empty = {"jd": base["jd"] - 3.0, "fid": 1, "pid": None, "magpsf": None, "diffmaglim": None}
        repeat = {**base, "magpsf": None, "diffmaglim": 20.0}  # same epoch as the candidate
        record["prv_candidates"] = [*history, empty, repeat] if k % 2 else [empty, *history]
        if k % 3 == 0:
            record.pop("candid", None)
        out.append(record)
    return out


def test_batches_equal_reference_with_forced_photometry_and_drops(all_records):
    for files in all_records.values():
        records = _with_forced([r for records in files[:40] for r in records])
        got = ztf._records_to_batch(records, "s")
        _assert_same(got, _reference_batch(records, "s"))
        assert set(got[0].dropped) == {
            ztf.DROP_NO_MAGNITUDE,
            ztf.DROP_FORCED_NO_MEASUREMENT,
            ztf.DROP_SAME_EPOCH,
        }


def _error(function, records) -> str:
    with pytest.raises(InputError) as info:
        function(records, "src")
    return str(info.value)


def test_errors_equal_reference(all_records):
    records = [r for records in all_records["ztf-avro-alert"] for r in records]
    cases = []
    bad_jd = copy.deepcopy(records)
    bad_jd[2]["prv_candidates"][1]["jd"] = None
    cases.append(bad_jd)
    bad_fid = copy.deepcopy(records)
    bad_fid[1]["candidate"]["fid"] = 4
    cases.append(bad_fid)
    bad_fid_and_later_record = copy.deepcopy(bad_fid)  # the point of the earlier alert wins
    bad_fid_and_later_record[3] = "not a record"
    cases.append(bad_fid_and_later_record)
    not_a_record = copy.deepcopy(records)
    not_a_record[3] = "not a record"
    cases.append(not_a_record)
    no_fid = copy.deepcopy(records)
    del no_fid[0]["candidate"]["fid"]
    cases.append(no_fid)
    no_object = copy.deepcopy(records)
    no_object[4]["objectId"] = None
    cases.append(no_object)
    forced_bad_fid = _with_forced(records)
    forced_bad_fid[5]["fp_hists"][2]["fid"] = 0
    cases.append(forced_bad_fid)
    for case in cases:
        assert _error(ztf._records_to_batch, case) == _error(_reference_batch, case)
    empty_batch = ztf._records_to_batch([], "none")
    _assert_same(empty_batch, _reference_batch([], "none"))

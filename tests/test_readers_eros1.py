"""EROS-1 reader on the real RAMP variable-star files under shared data lightcurves/eros1/."""

from __future__ import annotations

import collections
import logging
import math
from pathlib import Path

import numpy as np
import pytest

from astro_classifier.catalogs.eros1 import read_eros1
from astro_classifier.core.errors import InputError
from astro_classifier.core.lightcurve import BAND_INDEX, LightCurveBatch

STATIC_HEADER = (
    "Unnamed: 0,patch_id,star_id_b,star_id_r,magnitude_b,magnitude_r,asc_d,asc_m,asc_s,"
    "dec_d,dec_m,dec_s,period,type\n"
)
ARRAYS_HEADER = (
    ",time_points_b,time_points_r,light_points_b,light_points_r,error_points_b,error_points_r\n"
)


def _eros1_paths(shared_data: Path) -> tuple[Path, Path]:
    folder = shared_data / "lightcurves" / "eros1"
    return folder / "train.csv", folder / "train_varlength_features.csv.gz"


@pytest.fixture(scope="module")
def eros1(shared_data: Path) -> LightCurveBatch:
    return read_eros1(*_eros1_paths(shared_data))


def test_counts_labels_and_ids(eros1):
    assert len(eros1) == 2912
    assert collections.Counter(eros1.label.tolist()) == {
        "RRL": 1777,
        "Cepheid": 604,
        "EB": 339,
        "Mira": 192,
    }
    assert eros1.object_id[:3].tolist() == ["135_9613", "271_4304", "295_8200"]
    assert eros1.lengths.min() > 0
    assert set(eros1.band.tolist()) == {BAND_INDEX["g"], BAND_INDEX["r"]}
    assert eros1.detected.all()
    for k in range(0, len(eros1), 97):
        assert (np.diff(eros1.time[eros1.offsets[k] : eros1.offsets[k + 1]]) >= 0).all()


def test_first_point_hand_computed(eros1):
    # Star 135_9613, first b point: day 290.3, magnitude 19.15 +- 0.13 -> 10**(12.25 / 2.5) nJy.
    first = slice(eros1.offsets[0], eros1.offsets[0] + 1)
    assert eros1.time[first] == pytest.approx([290.3])
    assert eros1.band[first] == BAND_INDEX["g"]
    assert eros1.flux[first] == pytest.approx([79432.82], rel=1e-6)
    assert eros1.flux_err[first] == pytest.approx([79432.82 * math.log(10) / 2.5 * 0.13], rel=1e-6)


def test_metadata_positions_in_the_lmc(eros1):
    ra, dec = eros1.metadata["ra"], eros1.metadata["dec"]
    assert ((ra > 70) & (ra < 95)).all() and ((dec > -73) & (dec < -65)).all()
    # 135_9613: 5h 40m 51.37s, -70d 13' 58.78"
    assert ra[0] == pytest.approx(15 * (5 + 40 / 60 + 51.37 / 3600))
    assert dec[0] == pytest.approx(-(70 + 13 / 60 + 58.78 / 3600))
    assert eros1.metadata["period"][0] == pytest.approx(2.35495)
    assert not {"type", "star_id_b", "patch_id", "asc_d"} & set(eros1.metadata)


def test_capped_points_are_dropped_and_counted(shared_data, caplog):
    with caplog.at_level(logging.INFO, logger="astro_classifier.catalogs.eros1"):
        batch = read_eros1(*_eros1_paths(shared_data))
    assert "dropped 46 EROS-1 points" in caplog.text
    assert "b: 18, r: 28" in caplog.text
    assert len(batch.time) == 688_513 - 46
    assert batch.flux.min() > 10 ** ((31.4 - 25.0) / 2.5)  # nothing at the 25.0 mag cap


def _write(tmp_path: Path, static_rows: list[str], array_rows: list[str]) -> tuple[Path, Path]:
    static, arrays = tmp_path / "train.csv", tmp_path / "train_varlength_features.csv"
    static.write_text(STATIC_HEADER + "".join(static_rows))
    arrays.write_text(ARRAYS_HEADER + "".join(array_rows))
    return static, arrays


STAR_A = "1_1,1,1,1,19.1,18.8,5,40,51.4,-70,13,58.8,2.35,3\n"
STAR_A_ARRAYS = '1_1,"[1.0, 2.0]","[1.5]","[19.0, 25.0]","[18.7]","[0.1, 0.9]","[0.2]"\n'


def test_small_valid_pair(tmp_path):
    star_b = STAR_A.replace("1_1", "2_2").replace(",3\n", ",4\n")
    star_b_arrays = '2_2,"[3.0]","[]","[17.0]","[]","[0.05]","[]"\n'
    batch = read_eros1(*_write(tmp_path, [STAR_A, star_b], [STAR_A_ARRAYS, star_b_arrays]))
    assert batch.label.tolist() == ["RRL", "Mira"]
    assert batch.lengths.tolist() == [2, 1]  # star 1_1's 25.0 point is dropped
    assert batch.time.tolist() == [1.0, 1.5, 3.0]
    assert batch.band.tolist() == [BAND_INDEX["g"], BAND_INDEX["r"], BAND_INDEX["g"]]


@pytest.mark.parametrize(
    ("static_rows", "array_rows", "bad_file", "message"),
    [
        ([STAR_A.replace(",3\n", ",7\n")], [STAR_A_ARRAYS], "train.csv", "unknown EROS-1 type"),
        ([STAR_A], [STAR_A_ARRAYS.replace("1_1", "2_2")], "features", "star ids"),
        ([STAR_A], [STAR_A_ARRAYS.replace("[0.2]", "[0.2, 0.3]")], "features", "differ in length"),
        ([STAR_A], [STAR_A_ARRAYS.replace("[1.5]", "[x]")], "features", "non-numeric"),
        ([], [], "train.csv", "no rows"),
    ],
)
def test_bad_inputs_are_input_errors(tmp_path, static_rows, array_rows, bad_file, message):
    with pytest.raises(InputError, match=message) as info:
        read_eros1(*_write(tmp_path, static_rows, array_rows))
    assert bad_file in info.value.source


def test_missing_column_is_an_input_error(tmp_path):
    static, arrays = _write(tmp_path, [STAR_A], [STAR_A_ARRAYS])
    static.write_text(STATIC_HEADER.replace("asc_d", "ascd") + STAR_A)
    with pytest.raises(InputError, match="asc_d") as info:
        read_eros1(static, arrays)
    assert info.value.source == str(static)

"""The labelled real sets of :mod:`astro_classifier.catalogs` as input formats.

A catalogue reader takes a folder (or one of its files) and gives labelled light curves;
here each is declared once as an :class:`InputFormat` (recognise, read, and the spectra
beside the light curves where the set has them), so that ``read_light_curves``, training
and ``astroclf evaluate`` detect and read them like any other input. The catalogues know
nothing of this package (they import only :mod:`astro_classifier.core`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from astro_classifier.catalogs.alerce_examples import (
    looks_like_alerce_examples,
    read_alerce_examples,
)
from astro_classifier.catalogs.antares_bts import looks_like_antares_bts, read_antares_bts
from astro_classifier.catalogs.eros1 import read_eros1
from astro_classifier.catalogs.manytde import looks_like_manytde, read_manytde
from astro_classifier.catalogs.osc import looks_like_osc, read_osc
from astro_classifier.catalogs.slsne import looks_like_slsne, read_slsne
from astro_classifier.catalogs.spectra import read_osc_spectra, read_slsne_spectra
from astro_classifier.catalogs.tdss import looks_like_tdss_quasars, read_tdss_quasars
from astro_classifier.catalogs.ztf_bts import looks_like_ztf_bts, read_ztf_bts
from astro_classifier.core.errors import InputError
from astro_classifier.core.lightcurve import LightCurveBatch
from astro_classifier.core.tables import CSV_SUFFIXES
from astro_classifier.formats.base import FileProbe, InputFormat, ReadOptions

EROS1_TABLE_COLUMNS = ("star_id_b", "star_id_r", "magnitude_b", "magnitude_r")
EROS1_ARRAYS_SUFFIX = "_varlength_features.csv.gz"


def _catalogue(
    looks_like: Callable[[Path], bool], read: Callable[[Path], LightCurveBatch]
) -> tuple[Callable[[FileProbe], bool], Callable[[list[Path], ReadOptions], LightCurveBatch]]:
    """(recognise, read) of a catalogue reader that takes a folder (or one of its files)."""

    def read_all(paths: list[Path], _options: ReadOptions) -> LightCurveBatch:
        return LightCurveBatch.concat([read(path) for path in paths])

    return (lambda probe: looks_like(probe.path)), read_all


def _eros1_arrays(table_path: Path) -> Path:
    """``train.csv`` -> ``train_varlength_features.csv.gz`` beside it (must exist)."""
    stem = table_path.name
    for suffix in CSV_SUFFIXES:
        stem = stem.removesuffix(suffix)
    arrays = table_path.with_name(stem + EROS1_ARRAYS_SUFFIX)
    if not arrays.is_file():
        raise InputError(table_path, f"EROS-1 arrays file {arrays} not found beside it")
    return arrays


def _read_eros1(paths: list[Path], _options: ReadOptions) -> LightCurveBatch:
    return LightCurveBatch.concat([read_eros1(path, _eros1_arrays(path)) for path in paths])


EROS1 = InputFormat(
    "eros1",
    "EROS-1 train.csv with its arrays file beside it",
    lambda probe: set(EROS1_TABLE_COLUMNS) <= set(probe.columns),
    _read_eros1,
    absolute_time=False,
    label_column="type",
)
ZTF_BTS = InputFormat(
    "ztf-bts",
    "ZTF Bright Transient Survey light curves: a folder with bts.csv and light-curves/",
    *_catalogue(looks_like_ztf_bts, read_ztf_bts),
)
MANYTDE = InputFormat(
    "manytde",
    "manyTDE source JSONs (a file or a folder of them)",
    *_catalogue(looks_like_manytde, read_manytde),
)
SLSNE = InputFormat(
    "slsne",
    "SLSN-I catalogue of the slsne package (sne_data.txt with supernovae/)",
    *_catalogue(looks_like_slsne, read_slsne),
    spectra=read_slsne_spectra,
)
OSC = InputFormat(
    "osc",
    "Open Supernova Catalog objects.parquet + photometry.parquet (a folder)",
    *_catalogue(looks_like_osc, read_osc),
    spectra=read_osc_spectra,
)
ALERCE_EXAMPLES = InputFormat(
    "alerce-examples",
    "ALeRCE example detections, non-detections and labels (a folder)",
    *_catalogue(looks_like_alerce_examples, read_alerce_examples),
)
ANTARES_BTS = InputFormat(
    "ztf-bts-antares",
    "ZTF BTS transients as ANTARES alert light curves: labels.csv + "
    "antares_lightcurves.tar.gz (a folder)",
    *_catalogue(looks_like_antares_bts, read_antares_bts),
)
TDSS_QUASARS = InputFormat(
    "tdss-quasars",
    "TDSS/SDSS quasar light curves: gband.tar.gz + rband.tar.gz (a folder)",
    *_catalogue(looks_like_tdss_quasars, read_tdss_quasars),
)

"""astroclf's own JSON alert format: one object per message (or per line of a file).

::

    {"object_id": "ZTF21abc", "alert_id": "123",
     "points": [{"mjd": 60000.1, "band": "g", "flux": 1234.5, "flux_err": 12.3,
                 "detected": true}, ...],
     "metadata": {"hostgal_photoz": 0.12}}

Fluxes in nJy, times in MJD, bands among ``u g r i z y``; ``detected`` defaults to true.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from astro_classifier.core.errors import InputError
from astro_classifier.core.lightcurve import LightCurveBatch, band_indices
from astro_classifier.formats.base import InputFormat, ReadOptions

JSON_ALERT_KEYS = ("object_id", "points")  # what tells a JSON alert (first line of a file)


def decode_json_alert(data: bytes, source: str) -> LightCurveBatch:
    """astroclf's JSON alert format (module docstring) -> a one-object batch."""
    try:
        doc = json.loads(data)
        object_id = str(doc["object_id"])
        points = doc["points"]
        if not points:
            raise InputError(source, "no points; expected at least one observation")
        columns = {
            name: np.array([float(p[name]) for p in points]) for name in ("mjd", "flux", "flux_err")
        }
        bands = [str(p["band"]) for p in points]
        detected = np.array([bool(p.get("detected", True)) for p in points])
        metadata = {k: np.array([float(v)]) for k, v in (doc.get("metadata") or {}).items()}
        alert_id = doc.get("alert_id")
    except InputError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(
            source,
            f"not an astroclf JSON alert ({type(exc).__name__}: {exc}); expected "
            '{"object_id", "points": [{"mjd", "band", "flux", "flux_err"}]}',
        ) from exc
    return LightCurveBatch.from_points(
        [object_id] * len(points),
        columns["mjd"],
        band_indices(bands, source),
        columns["flux"],
        columns["flux_err"],
        detected,
        objects=[object_id],
        metadata=metadata,
        alert_id=None if alert_id is None else [str(alert_id)],
    )


def _read(paths: list[Path], _options: ReadOptions) -> LightCurveBatch:
    batches = []
    for path in paths:
        try:
            lines = path.read_bytes().splitlines()
        except OSError as exc:
            raise InputError(path, f"cannot read file ({exc})") from exc
        batches += [
            decode_json_alert(line, f"{path}:{number}")
            for number, line in enumerate(lines, start=1)
            if line.strip()
        ]
    if not batches:
        raise InputError(paths[0], "no JSON alert in the file")
    return LightCurveBatch.concat(batches)


def _decode(value: bytes, _schemas: Any, source: str) -> LightCurveBatch:
    return decode_json_alert(value, source)


JSON = InputFormat(
    "json",
    'astroclf JSON alerts, one per line {"object_id", "points": [...]}',
    lambda probe: set(JSON_ALERT_KEYS) <= probe.json_keys,
    _read,
    _decode,
)

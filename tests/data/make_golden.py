"""Write tests/data/golden_probabilities.json: the shipped models' outputs on fixed real inputs.

Rerun ONLY when a shipped model was retrained or re-exported on purpose; test_golden.py fails
otherwise, by design (a changed probability is a changed product). From the project root::

    python tests/data/make_golden.py

Inputs: 10 PLAsTiCC objects of the committed sample examples/plasticc (the first object of
each of the first 10 classes, in label order) for atat-lsst, and 5 ZTF alert files of the
shared data (alerts/ztf/ztf-avro-alert, in ``ASTROCLF_SHARED_DATA``, default ../shared/data)
for atat-ztf. The shared files are named, not copied.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from astro_classifier.core.lightcurve import LightCurveBatch
from astro_classifier.formats.plasticc import read_plasticc
from astro_classifier.formats.ztf import read_ztf_avro
from astro_classifier.inference.classify import classify
from astro_classifier.inference.model import LoadedModel

PROJECT_ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parent / "golden_probabilities.json"
PLASTICC_EXAMPLES = ("examples/plasticc/lightcurves.csv", "examples/plasticc/metadata.csv")
ZTF_ALERT_DIR = "alerts/ztf/ztf-avro-alert"  # relative to the shared data folder
ZTF_ALERT_FILES = (
    "1661382530015060001.avro",
    "2019_01_10_739260766315010006.avro",
    "472263571115115000.avro",
    "472263571115115008.avro",
    "forcedphot_test_1660293514215020000.avro",
)
N_PLASTICC = 10
DECIMALS = 6


def shared_data_dir() -> Path:
    return Path(os.environ.get("ASTROCLF_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))


def probabilities(batch: LightCurveBatch, model_name: str) -> dict:
    model = LoadedModel.load(model_name, provider="cpu")
    result = classify(batch, model)
    assert not result.skipped, f"{model_name}: golden inputs must all be classifiable"
    return {
        "model": result.model,
        "model_version": result.model_version,
        "labels": list(result.labels),
        "object_ids": result.object_id.tolist(),
        "alert_ids": result.to_arrow().column("alert_id").to_pylist(),
        "probabilities": np.round(result.probabilities.astype(np.float64), DECIMALS).tolist(),
    }


def main() -> None:
    examples = read_plasticc(*(PROJECT_ROOT / p for p in PLASTICC_EXAMPLES))
    _, first = np.unique(examples.label, return_index=True)
    lsst_ids = examples.object_id[np.sort(first[:N_PLASTICC])].tolist()
    lsst = examples.select([examples.object_id.tolist().index(o) for o in lsst_ids])
    ztf = read_ztf_avro([shared_data_dir() / ZTF_ALERT_DIR / name for name in ZTF_ALERT_FILES])
    golden = {
        "about": "expected classify() output of the shipped models; regenerate with "
        "tests/data/make_golden.py only when a model was retrained on purpose",
        "atat-lsst": {
            "inputs": {"light_curves": PLASTICC_EXAMPLES[0], "metadata": PLASTICC_EXAMPLES[1]},
            **probabilities(lsst, "atat-lsst"),
        },
        "atat-ztf": {
            "inputs": {"shared_data": ZTF_ALERT_DIR, "files": list(ZTF_ALERT_FILES)},
            **probabilities(ztf, "atat-ztf"),
        },
    }
    text = json.dumps(golden, indent=1)
    # One line per innermost list (a probability row, the labels): readable diffs.
    text = re.sub(r"\[([^\[\]{}]*)\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
    GOLDEN.write_text(text + "\n")
    print(f"wrote {GOLDEN.relative_to(PROJECT_ROOT)}")


if __name__ == "__main__":
    main()

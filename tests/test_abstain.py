"""Broad kind, OOD score and abstention in classify()'s output (shipped models: fallback score)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from astro_classifier.core.lightcurve import SOLAR_SYSTEM, LightCurveBatch
from astro_classifier.core.taxonomy import BROAD_CLASSES, broad_mapping
from astro_classifier.formats.ztf import read_ztf_avro
from astro_classifier.inference.classify import (
    ABSTAIN_FEW_POINTS,
    ABSTAIN_SOLAR_SYSTEM,
    classify,
)
from astro_classifier.inference.model import (
    FALLBACK_OOD_THRESHOLD,
    OOD_NEG_LOG_MAX_PROB,
    LoadedModel,
    ModelMetadata,
    read_metadata,
)
from tests.test_classify import contract_columns


@pytest.fixture(scope="module")
def ztf_model() -> LoadedModel:
    return LoadedModel.load("atat-ztf", provider="cpu")


@pytest.fixture(scope="module")
def fink_alerts(shared_data: Path) -> LightCurveBatch:
    files = sorted((shared_data / "alerts" / "ztf" / "fink-v4.02").glob("*.avro"))
    batch = read_ztf_avro(files)
    solar = batch.metadata[SOLAR_SYSTEM]
    # a few known asteroids and a few ordinary alerts
    return batch.select(np.r_[np.flatnonzero(solar == 1)[:4], np.flatnonzero(solar == 0)[:6]])


def _curve(object_id: str, n: int) -> LightCurveBatch:
    return LightCurveBatch.from_points(
        [object_id] * n,
        60000.0 + np.arange(n),
        np.full(n, 2),  # r
        np.full(n, 5000.0),
        np.full(n, 50.0),
        np.ones(n, bool),
    )


def test_known_asteroids_abstain(ztf_model: LoadedModel, fink_alerts: LightCurveBatch) -> None:
    result = classify(fink_alerts, ztf_model, n_jobs=1)
    table = result.to_arrow()
    assert table.column_names == contract_columns(ztf_model.metadata.labels)
    assert table.num_rows == len(fink_alerts)
    solar = fink_alerts.metadata[SOLAR_SYSTEM][result.rows] == 1
    abstain = table.column("abstain").to_numpy(zero_copy_only=False)
    assert solar.sum() == 4 and abstain[solar].all()
    assert result.abstained[ABSTAIN_SOLAR_SYSTEM] == 4
    assert sorted(result.abstained_rows[ABSTAIN_SOLAR_SYSTEM]) == sorted(result.rows[solar])


def test_one_and_two_point_light_curves_abstain(ztf_model: LoadedModel) -> None:
    batch = LightCurveBatch.concat([_curve("one", 1), _curve("two", 2), _curve("ten", 10)])
    result = classify(batch, ztf_model, n_jobs=1)
    abstain = dict(
        zip(
            result.object_id.tolist(),
            result.abstain.tolist(),
            strict=True,
        )
    )
    assert abstain["one"] and abstain["two"]
    assert result.abstained[ABSTAIN_FEW_POINTS] == 2
    assert sorted(batch.object_id[result.abstained_rows[ABSTAIN_FEW_POINTS]]) == ["one", "two"]


def test_broad_probabilities_sum_fine_ones(
    ztf_model: LoadedModel, fink_alerts: LightCurveBatch
) -> None:
    table = classify(fink_alerts, ztf_model, n_jobs=1).to_arrow()
    labels = ztf_model.metadata.labels
    fine = np.stack([table.column(f"prob_{c}").to_numpy() for c in labels], axis=1)
    broad = np.stack([table.column(f"prob_{k}").to_numpy() for k in BROAD_CLASSES], axis=1)
    assert broad.dtype == np.float32
    np.testing.assert_allclose(broad.sum(axis=1), 1.0, atol=1e-5)
    mapping = broad_mapping(labels)
    for k, kind in enumerate(BROAD_CLASSES):
        members = [j for j, c in enumerate(labels) if mapping[c] == kind]
        np.testing.assert_allclose(broad[:, k], fine[:, members].sum(axis=1), atol=1e-6)
    assert table.column("broad_class").to_pylist() == [
        BROAD_CLASSES[k] for k in broad.argmax(axis=1)
    ]


@pytest.fixture(scope="module")
def old_style_model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """The shipped atat-ztf as a model file from before calibration and abstention: no
    broad_classes, calibration or ood metadata, and no logits output."""
    import onnx

    from astro_classifier.inference.model import resolve_model_path

    proto = onnx.load(str(resolve_model_path("atat-ztf")))
    keep = [
        p
        for p in proto.metadata_props
        if p.key.split(".", 1)[-1] not in ("broad_classes", "calibration", "ood")
    ]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    outputs = [o for o in proto.graph.output if o.name != "logits"]
    del proto.graph.output[:]
    proto.graph.output.extend(outputs)
    path = tmp_path_factory.mktemp("old") / "atat-ztf-old.onnx"
    onnx.save(proto, str(path))
    return LoadedModel.load(path, provider="cpu")


def test_model_without_new_metadata_uses_the_documented_fallback(
    old_style_model: LoadedModel, fink_alerts: LightCurveBatch
) -> None:
    ztf_model = old_style_model
    meta = ztf_model.metadata
    assert meta.broad_classes is None and meta.calibration is None and meta.ood is None
    assert meta.broad_mapping() == broad_mapping(meta.labels)
    assert not ztf_model.has_logits
    spec = ztf_model.ood_spec()
    assert spec.score == OOD_NEG_LOG_MAX_PROB
    assert spec.threshold == FALLBACK_OOD_THRESHOLD == pytest.approx(np.log(2))
    assert spec.min_points == 3
    table = classify(fink_alerts, ztf_model, n_jobs=1).to_arrow()
    ood = table.column("ood_score").to_numpy()
    assert ood.dtype == np.float32
    np.testing.assert_allclose(ood, -np.log(table.column("probability").to_numpy()), atol=1e-6)


def test_new_metadata_fields_round_trip_and_old_props_load() -> None:
    meta = read_metadata("atat-lsst")
    old_props = meta.to_props()
    for key in ("broad_classes", "calibration", "ood"):
        old_props.pop(f"astroclf.{key}", None)
    assert ModelMetadata.from_props(old_props, "old").ood is None
    new = ModelMetadata.model_validate(
        {
            **meta.model_dump(),
            "broad_classes": broad_mapping(meta.labels),
            "calibration": {
                "temperature": 1.5,
                "ece_before": 0.1,
                "ece_after": 0.02,
                "nll_before": 1.0,
                "nll_after": 0.9,
                "n_objects": 100,
                "fitted_on": "validation",
            },
            "ood": {"score": "energy", "threshold": -3.0, "quantile": 0.95, "min_points": 3},
        }
    )
    back = ModelMetadata.from_props(new.to_props(), "new")
    assert back.broad_classes == broad_mapping(meta.labels)
    assert back.calibration.temperature == 1.5 and back.ood.threshold == -3.0

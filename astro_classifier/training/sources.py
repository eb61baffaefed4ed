"""The labelled objects a training config names, and the object-group splits (no torch).

:func:`read_training_objects` reads the main set and every ``extra_sources`` entry through
the format registry, keeps the real-sky train split where asked, renames labels
(``label_map``), keeps ``classes``, adds augmented copies, and tags every object with its
split group. :func:`grouped_splits` then splits by group, so that an object and its copies
never fall on both sides. Benchmarks use the same two functions to fit their baselines on
exactly what a model was trained on.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
from rich.console import Console

from astro_classifier.catalogs.splits import real_sky_split, stratified_folds, stratified_split
from astro_classifier.core.cutouts import ALERT_LABELS, align_cutouts
from astro_classifier.core.errors import InputError
from astro_classifier.core.lightcurve import LightCurveBatch
from astro_classifier.core.taxonomy import broad_class_of
from astro_classifier.features.render import PROCESSINGS, render_random
from astro_classifier.formats.registry import read_cutouts_of, read_light_curves
from astro_classifier.training.augment import AugmentSpec, augment
from astro_classifier.training.config import RenderSection, SourceSection, TrainConfig

GROUP_STRIDE = 1e7  # split_group = source index * GROUP_STRIDE + row of the object in its source


def read_training_objects(cfg: TrainConfig, console: Console) -> LightCurveBatch:
    """Every labelled object the config names, labels mapped and filtered, copies added.

    Each object carries metadata ``split_group`` (objects of one group, an original and its
    augmented copies, always land on the same side of every split) and ``augment_copy``
    (0 for an object as read).
    """
    data = cfg.data
    main = SourceSection(
        path=data.light_curves,
        format=data.format,
        metadata=data.metadata,
        augment=data.augment,
        render=data.render,
    )
    batches = []
    for index, src in enumerate([main, *data.extra_sources]):
        batch = read_light_curves([src.path], format=src.format, metadata=src.metadata)
        if batch.label is None and data.alert_label is not None:
            batch = label_alerts(batch, src, data.alert_label, console)
        if batch.label is None:
            raise InputError(
                src.path,
                "no labels found; training needs labelled data (or, for alerts, data.alert_label)",
            )
        if src.split == "real-sky-train":
            batch = batch.select(np.flatnonzero(~real_sky_split(batch.object_id)))
        batch.label = np.asarray([data.label_map.get(lab, lab) for lab in batch.label])
        if data.classes is not None:
            keep = np.isin(batch.label, data.classes)
            if not keep.all():
                dropped = Counter(batch.label[~keep].tolist())
                console.print(
                    f"[dim]{src.path}: not trained on (class not in data.classes): {dict(dropped)}[/dim]"
                )
            batch = batch.select(np.flatnonzero(keep))
        limit = data.max_objects if index == 0 else src.max_objects
        if limit is not None and limit < len(batch):
            _, keep = stratified_split(batch.label, limit / len(batch), data.seed)
            batch = batch.select(keep)
        # alerts of one object (a later alert repeats the earlier ones' history) form a group
        _, first, inverse = np.unique(
            batch.object_id.astype(str), return_index=True, return_inverse=True
        )
        groups = index * GROUP_STRIDE + first[inverse].astype(np.float64)
        if src.augment is not None:
            spec = AugmentSpec(**src.augment.model_dump())
            batch = augment(batch, spec)
            groups = index * GROUP_STRIDE + batch.metadata.pop("augment_parent")
        else:
            batch.metadata["augment_copy"] = np.zeros(len(batch))
        batch.metadata["split_group"] = groups
        if src.render is not None:
            batch = add_rendered_copies(batch, src.render)
        # numeric metadata only: string columns (a catalogue's type text) are not model inputs
        batch.metadata = {
            k: v for k, v in batch.metadata.items() if np.asarray(v).dtype.kind in "fiub"
        }
        console.print(f"{src.path}: {len(batch)} objects ({dict(Counter(batch.label.tolist()))})")
        batches.append(batch)
    return LightCurveBatch.concat(batches)


def add_rendered_copies(batch: LightCurveBatch, spec: RenderSection) -> LightCurveBatch:
    """``batch`` followed by ``spec.copies`` copies of (up to ``spec.max_per_class`` objects
    per class of) it, each object of a copy in a processing drawn from ``spec.processings``.

    Copies keep their object's ``split_group``, so they fall on its side of every split, and
    get ``augment_copy`` numbers after the existing ones (validation and hold-out rows are the
    objects as read); metadata ``processing`` says which rendering each row is (-1: as read,
    else the index in :data:`PROCESSINGS`)."""
    rng = np.random.default_rng(spec.seed)
    rows = np.arange(len(batch))
    if spec.max_per_class is not None:
        rows = np.concatenate(
            [
                rng.permutation(np.flatnonzero(batch.label == label))[: spec.max_per_class]
                for label in np.unique(batch.label)
            ]
        )
        rows.sort()
    base = batch.select(rows)
    names_list = list(PROCESSINGS)
    # a pre-explosion baseline makes sense for transients only
    baseline = spec.baseline & np.array(
        [broad_class_of(str(label)) == "transient" for label in base.label], bool
    )
    first_copy = float(np.max(batch.metadata["augment_copy"], initial=0.0)) + 1
    as_read = dataclasses.replace(
        batch, metadata={**batch.metadata, "processing": np.full(len(batch), -1.0)}
    )
    copies = [as_read]
    for c in range(spec.copies):
        rendered, names = render_random(base, rng, processings=spec.processings, baseline=baseline)
        rendered.metadata["augment_copy"] = np.full(len(rendered), first_copy + c)
        rendered.metadata["processing"] = np.array([names_list.index(n) for n in names], np.float64)
        copies.append(rendered)
    return LightCurveBatch.concat(copies)


def label_alerts(
    batch: LightCurveBatch, src: SourceSection, kind: str, console: Console
) -> LightCurveBatch:
    """Alerts labelled by what they provide themselves (``data.alert_label``; see
    :data:`astro_classifier.core.cutouts.ALERT_LABELS`); alerts whose label is unknown are
    counted, reported and left out."""
    if batch.alert_id is None:
        raise InputError(
            src.path, f"data.alert_label {kind!r} needs alerts; these are light curves"
        )
    fields = align_cutouts(batch, read_cutouts_of([src.path], src.format))
    value = fields.labels()[kind]
    positive, negative = ALERT_LABELS[kind]
    known = np.isfinite(value)
    if not known.all():
        console.print(
            f"[yellow]{src.path}: {int((~known).sum())} alerts without the fields of "
            f"alert_label {kind!r}: not trained on[/yellow]"
        )
        batch, value = batch.select(np.flatnonzero(known)), value[known]
    batch.label = np.where(value == 1.0, positive, negative)
    return batch


def grouped_splits(
    batch: LightCurveBatch, cfg: TrainConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, validation, hold-out) rows of ``batch``, split by object group.

    Folds and the validation split are stratified over groups (an object and its augmented
    copies), so no copy of a validation or hold-out object is trained on. Validation and
    hold-out rows are the objects as read (``augment_copy`` 0) where the group has one, else
    all its copies (a source whose originals are not kept).
    """
    meta = batch.metadata
    groups = meta.get("split_group", np.arange(len(batch), dtype=np.float64))
    copy = meta.get("augment_copy", np.zeros(len(batch)))
    unique, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    group_label = batch.label[first]
    folds = stratified_folds(group_label, cfg.data.n_folds, seed=cfg.data.seed)
    holdout_groups = (
        np.flatnonzero(folds == cfg.data.holdout_fold)
        if cfg.data.holdout_fold is not None
        else np.zeros(0, np.int64)
    )
    rest = np.setdiff1d(np.arange(len(unique)), holdout_groups)
    tr, va = stratified_split(group_label[rest], cfg.data.val_fraction, cfg.data.seed)
    has_original = np.zeros(len(unique), bool)
    has_original[inverse[copy == 0]] = True

    def evaluation_rows(chosen: np.ndarray) -> np.ndarray:
        member = np.isin(inverse, chosen)
        return np.flatnonzero(member & ((copy == 0) | ~has_original[inverse]))

    train_rows = np.flatnonzero(np.isin(inverse, rest[tr]))
    return train_rows, evaluation_rows(rest[va]), evaluation_rows(holdout_groups)

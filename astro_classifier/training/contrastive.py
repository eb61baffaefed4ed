"""Contrastive pretraining on renderings: the same object in two processings is one object.

Before the supervised epochs, the ATAT encoders can be pretrained without labels (SimCLR,
Chen et al. 2020): each object of a minibatch is rendered twice by
:func:`astro_classifier.features.render.render_random`, each time in a processing drawn at random
(as read, alert, forced photometry, detections only, sparse, Rubin-like), both renderings go
through the serving preprocessing (:func:`light_curves_to_inputs`: nightly binning, window,
tabular features), and the NT-Xent loss pulls the two representations of an object together
and pushes those of the other objects of the minibatch away. A representation that cannot
tell the processings of one object apart cannot carry the catalogue shortcut.

The representation is the family's (:meth:`Family.representation
<astro_classifier.families.base.Family.representation>`; ATAT: the concatenation of the
light-curve and tabular encoders' CLS outputs, what the mixed head reads), followed by a
two-layer projection head used only here. The learning rate follows the shared schedule
(:func:`astro_classifier.training.loop.warmup_cosine`, without warm-up).
Only the objects as read (rows whose metadata ``processing`` is -1, or every row when the
training set has no rendered copies) of the training split take part; validation and
hold-out objects never do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from astro_classifier.core.lightcurve import LightCurveBatch
from astro_classifier.core.progress import progress_bar
from astro_classifier.core.taxonomy import broad_class_of
from astro_classifier.families.base import Family
from astro_classifier.features.preprocess import PreprocessingSpec, light_curves_to_inputs
from astro_classifier.features.render import render_random
from astro_classifier.training.loop import warmup_cosine


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent loss of B positive pairs (rows of ``a`` and ``b``): each of the 2B vectors
    must pick its partner among the other 2B - 1 by cosine similarity / temperature."""
    z = F.normalize(torch.cat([a, b]), dim=-1)
    sim = z @ z.T / temperature
    n = len(a)
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(a.device)
    return F.cross_entropy(sim, target)


def pretraining_rows(batch: LightCurveBatch, train_idx: np.ndarray) -> np.ndarray:
    """Training rows that are objects as read (not rendered copies of them)."""
    processing = batch.metadata.get("processing")
    if processing is None:
        return np.asarray(train_idx)
    return np.asarray(train_idx)[np.asarray(processing)[train_idx] == -1]


def pretrain_on_renderings(
    model: nn.Module,
    family: Family,
    batch: LightCurveBatch,
    rows: np.ndarray,
    spec: PreprocessingSpec,
    *,
    epochs: int,
    processings: Sequence[str],
    temperature: float,
    learning_rate: float,
    batch_size: int,
    seed: int,
    device: torch.device,
    console: Console,
) -> list[float]:
    """Pretrain ``model``'s encoders in place on pairs of renderings of ``batch`` rows
    ``rows``; returns the mean loss of each epoch. The projection head is thrown away."""
    rng = np.random.default_rng(seed)
    width = family.representation_width(model)
    projection = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, 64)).to(device)
    params = list(model.parameters()) + list(projection.parameters())
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=1e-2)
    scheduler = warmup_cosine(optimizer, epochs * math.ceil(len(rows) / batch_size), 0)
    transient = np.array(
        [broad_class_of(str(label)) == "transient" for label in batch.label[rows]], bool
    )
    history = []
    model.train()
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(rows))
        losses = []
        with progress_bar(f"pretrain {epoch}/{epochs}", console) as bar:
            task = bar.add_task("", total=math.ceil(len(order) / batch_size))
            for start in range(0, len(order), batch_size):
                pick = order[start : start + batch_size]
                if len(pick) < 2:
                    continue
                sub = batch.select(rows[pick])
                views = [
                    render_random(sub, rng, processings=processings, baseline=transient[pick])[0]
                    for _ in range(2)
                ]
                z = [
                    projection(
                        family.representation(
                            model,
                            {
                                k: torch.from_numpy(v).to(device)
                                for k, v in light_curves_to_inputs(view, spec).as_dict().items()
                            },
                        )
                    )
                    for view in views
                ]
                loss = nt_xent(z[0], z[1], temperature)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                scheduler.step()
                losses.append(loss.item())
                bar.update(task, advance=1)
        history.append(float(np.mean(losses)))
        console.print(f"pretrain epoch {epoch}  NT-Xent {history[-1]:.3f}")
    return history

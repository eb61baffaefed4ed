"""The one training loop, and its learning-rate schedule.

:func:`run_epochs` trains a model's ``params`` with AdamW under :func:`warmup_cosine` (linear
warm-up over ``warmup_epochs``, then cosine to 0), clipping the gradient norm at 1. Each
epoch: the caller's ``train_mode``, its batches, for each the caller's :class:`Step` (the loss
to optimise and the value to report; a family's :meth:`loss
<astro_classifier.families.base.Family.loss>`), then its :class:`Validation` (the epoch's
history row, the score to maximise and a line to print). The state of the best-scoring epoch is
kept and restored at the end; training stops early after ``patience`` epochs without a better
score, or once ``time_limit_minutes`` have passed. Every training (supervised, contrastive
pretraining, masked-image modelling) goes through it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import TextColumn

from astro_classifier.core.progress import progress_bar


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning-rate factor (step + 1) / warmup for the first ``warmup_steps`` steps, then
    0.5 (1 + cos(pi progress)) down to 0 at ``total_steps``."""

    def lr_at(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)


@dataclass(frozen=True)
class Schedule:
    """How long and how fast: epochs, optimiser settings, early stopping."""

    epochs: int
    learning_rate: float
    weight_decay: float
    warmup_epochs: int
    patience: int | None = None  # epochs without a better score before stopping; None: never
    time_limit_minutes: float | None = None


@dataclass
class Step:
    """One batch's loss to optimise, the value reported for it, and its weight in the
    epoch's mean training loss."""

    loss: torch.Tensor
    value: float
    weight: float = 1.0


@dataclass
class Validation:
    """After an epoch: its history row (beside epoch and train_loss), the score to
    maximise (None: minus the epoch's training loss), and the text printed after the
    training loss."""

    row: dict[str, Any]
    score: float | None
    text: str


@dataclass
class LoopResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_score: float = -math.inf
    seconds: float = 0.0


def run_epochs(
    model: torch.nn.Module,
    params: list[torch.nn.Parameter],
    schedule: Schedule,
    steps_per_epoch: int,
    batches: Callable[[], Sequence[Any]],
    step: Callable[[Any], Step],
    validate: Callable[[], Validation],
    train_mode: Callable[[], None] | None = None,
    console: Console | None = None,
    log: Callable[[str], None] | None = None,
    metric: str = "validation macro F1",
) -> LoopResult:
    """Train ``model`` (see the module docstring); returns the history and the best epoch,
    with the best epoch's state loaded. ``console``: progress bar and epoch lines; ``log``:
    epoch lines only; ``metric``: what the score is, for the early-stop message."""
    optimizer = torch.optim.AdamW(
        params, lr=schedule.learning_rate, weight_decay=schedule.weight_decay
    )
    scheduler = warmup_cosine(
        optimizer, schedule.epochs * steps_per_epoch, schedule.warmup_epochs * steps_per_epoch
    )
    say = log or (console.print if console is not None else (lambda _: None))
    result = LoopResult()
    best_state = None
    since_best = 0
    started = time.perf_counter()
    loss_column = TextColumn("loss {task.fields[loss]:.3f}")
    with progress_bar(
        "epoch {task.fields[epoch]}", console or Console(quiet=True), loss_column
    ) as bar:
        for epoch in range(1, schedule.epochs + 1):
            (train_mode or model.train)()
            epoch_batches = batches()
            task = bar.add_task("", total=len(epoch_batches), epoch=epoch, loss=float("nan"))
            values, weights = [], []
            for batch in epoch_batches:
                out = step(batch)
                optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                scheduler.step()
                values.append(out.value)
                weights.append(out.weight)
                bar.update(task, advance=1, loss=float(np.average(values, weights=weights)))
            bar.remove_task(task)
            train_loss = float(np.average(values, weights=weights)) if values else float("nan")
            validation = validate()
            result.history.append({"epoch": epoch, "train_loss": train_loss, **validation.row})
            score = -train_loss if validation.score is None else validation.score
            improved = score > result.best_score
            say(
                f"epoch {epoch:3d}  train loss {train_loss:.3f}  {validation.text}".rstrip()
                + ("  *" if improved else "")
            )
            if improved:
                result.best_score, result.best_epoch, since_best = score, epoch, 0
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            else:
                since_best += 1
                if schedule.patience is not None and since_best >= schedule.patience:
                    say(f"early stop: no better {metric} for {schedule.patience} epochs")
                    break
            minutes = schedule.time_limit_minutes
            if minutes and time.perf_counter() - started > 60 * minutes:
                say(f"stopping: time limit of {minutes} minutes reached")
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    result.seconds = time.perf_counter() - started
    return result

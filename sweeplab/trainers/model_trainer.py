"""What the built-in trainers share (news, retrieval, sentiment).

:class:`ModelTrainer` is the common half of a :class:`~sweeplab.core.RoundTrainer`:
AdamW (by default with weight decay on weight matrices only, not on biases or LayerNorm weights,
the usual BERT / CLIP practice), a learning-rate schedule (a transformers warm-up schedule stepped
once per optimizer step, :func:`warmup_schedule`, or ReduceLROnPlateau stepped on the validation
loss, :func:`plateau_schedule`), gradient clipping, mixed precision (a ``GradScaler`` for fp16),
the best state kept on the CPU, and the trial's memory given back at the end. A task's trainer
subclasses it, builds its model and data, and writes ``train_round`` (calling
:meth:`ModelTrainer.optimise` once per batch, its losses summed by a :class:`LossTally`) and
``evaluate`` (class probabilities read back once by :func:`class_probabilities`). Every built-in
trainer runs under :func:`~sweeplab.trainers.loop.fit_and_close`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from sweeplab.core import TrialEnv
from sweeplab.trainers.backbones import quiet_loaders
from sweeplab.trainers.device import autocast, compile_in_place

__all__ = ["LossTally", "ModelTrainer", "Schedule", "adamw", "class_probabilities", "decay_groups", "plateau_schedule",
           "save_with_tokenizer", "warmup_schedule"]

#: Makes a trial's learning-rate scheduler for its optimizer.
Schedule = Callable[[torch.optim.Optimizer], LRScheduler | ReduceLROnPlateau]
Batch = TypeVar("Batch")


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: weight decay on the trainable weight matrices, none on biases and
    normalisation weights (the 1-d parameters)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}]


def adamw(groups: list[dict[str, Any]] | list[nn.Parameter], lr: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW fused into one kernel per step where torch offers that for the parameters' device
    (CUDA, and the CPU in current torch), else the multi-tensor (foreach) form. On the CPU the
    default per-parameter loop costs 0.19 s a step on a 21M-parameter embedding, the fused one 0.013 s."""
    try:
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, foreach=True)


def warmup_schedule(name: str, total_steps: int, warmup_steps: int) -> Schedule:
    """A transformers schedule ``name`` (``linear``, ``cosine``...) over ``total_steps`` optimizer
    steps, the first ``min(warmup_steps, total_steps)`` of them warming up from 0; the trainer steps
    it once per optimizer step."""
    from transformers import get_scheduler

    return lambda optimizer: get_scheduler(name, optimizer, num_warmup_steps=min(warmup_steps, total_steps),
                                           num_training_steps=total_steps)


def plateau_schedule(factor: float, patience: int) -> Schedule:
    """``ReduceLROnPlateau`` on the validation loss: the learning rate is multiplied by ``factor``
    once ``val_loss`` has not improved for more than ``patience`` evaluations; the trainer steps it
    after each evaluation (:meth:`ModelTrainer.after_evaluation`)."""
    return lambda optimizer: ReduceLROnPlateau(optimizer, mode="min", factor=factor, patience=patience)


@torch.no_grad()
def class_probabilities(model: nn.Module, batches: Iterable[Batch], logits_of: Callable[[Batch], torch.Tensor],
                        device: torch.device, precision: str) -> np.ndarray:
    """Class probabilities (the softmax of ``logits_of(batch)``, in float32) of every batch, in
    order, with ``model`` in evaluation mode under the trial's precision. They are read back from
    the device once, at the end: a read per batch would wait for the GPU each time."""
    model.eval()
    parts = []
    for batch in batches:
        with autocast(device, precision):
            logits = logits_of(batch)
        parts.append(torch.softmax(logits.float(), dim=-1))
    return torch.cat(parts).cpu().numpy()


class LossTally:
    """The mean training loss of a round, summed on the device the losses are on.

    Reading a loss as a Python number (``float(loss)``) makes the host wait for the GPU to finish
    the step, so the next step's kernels cannot be queued meanwhile; summing the detached losses
    as tensors keeps the GPU busy, and the host reads the sum once per round (:meth:`mean`). A
    loss that became NaN or infinite is noticed every ``check_every`` steps (:meth:`add` returns
    ``True``: stop the round), at the cost of one wait each; the round's mean then says so and
    :func:`~sweeplab.trainers.loop.fit` ends the trial."""

    def __init__(self, check_every: int = 50) -> None:
        self.check_every = check_every
        self.total: torch.Tensor | None = None
        self.count = 0
        self.steps = 0

    def add(self, loss: torch.Tensor, weight: int = 1) -> bool:
        """Add one step's (mean) loss, weighted by ``weight`` (its batch size, for a per-example
        mean; 1 for a per-step mean). Returns whether the sum has turned non-finite, checked
        every ``check_every`` steps."""
        term = loss.detach().float() * weight
        self.total = term if self.total is None else self.total + term
        self.count += weight
        self.steps += 1
        return self.steps % self.check_every == 0 and not bool(torch.isfinite(self.total))

    def mean(self) -> float:
        """The weighted mean of the losses added (NaN when none was)."""
        return float(self.total) / self.count if self.total is not None else math.nan


class ModelTrainer:
    """Optimizer, schedule, clipping, precision and memory of one model's trial (see the module
    docstring).

    ``model`` is one module, or named parts (a mapping or an ``nn.ModuleDict``: a head and the
    backbones it reads, called one by one): the parts are held as a ``ModuleDict``
    (:attr:`model`), each is compiled on its own when the sweep asks (``env.compile``; a
    ``ModuleDict`` has no forward of its own to compile), and the snapshot is one state dict per
    part. ``schedule`` makes the learning-rate scheduler (:func:`warmup_schedule`,
    :func:`plateau_schedule`). The config gives ``lr``, ``weight_decay`` and ``max_grad_norm``
    (absent or 0: no clipping). A step reads nothing back from the device (:meth:`optimise`;
    clipping and a bf16 or fp32 step queue kernels only, an fp16 ``GradScaler`` alone reads its
    inf check every step)."""

    def __init__(self, model: nn.Module | Mapping[str, nn.Module], config: Mapping[str, Any], env: TrialEnv,
                 schedule: Schedule) -> None:
        self.config, self.env, self.device = config, env, env.device
        self.model = (nn.ModuleDict(model) if isinstance(model, Mapping) else model).to(self.device)
        compile_in_place(self._parts(), env.compile)
        self.optimizer = adamw(self.parameter_groups(), float(config["lr"]))
        self.scheduler = schedule(self.optimizer)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=env.precision == "fp16")
        self.clip = float(config.get("max_grad_norm", 0.0))
        self.generator = torch.Generator().manual_seed(env.trial_seed)

    def _parts(self) -> list[nn.Module]:
        """The modules a forward pass calls: the named parts, or the one model."""
        return list(self.model.values()) if isinstance(self.model, nn.ModuleDict) else [self.model]

    def parameter_groups(self) -> list[dict[str, Any]]:
        """AdamW's parameter groups: weight decay on weight matrices only (:func:`decay_groups`).
        A task whose recipe decays every parameter overrides this."""
        return decay_groups(self.model, float(self.config["weight_decay"]))

    def optimise(self, loss: torch.Tensor) -> torch.Tensor:
        """One optimizer step on ``loss``; returns it detached (a tensor: reading it as a number
        would wait for the GPU, see :class:`LossTally`)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss.float()).backward()
        if self.clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if not isinstance(self.scheduler, ReduceLROnPlateau):
            self.scheduler.step()
        return loss.detach()

    def shuffled_batches(self, rows: int, batch_size: int) -> tuple[torch.Tensor, ...]:
        """The row indices ``0 .. rows - 1`` in a fresh order from the trial's generator, cut into
        batches of ``batch_size`` (the last may be shorter)."""
        return torch.randperm(rows, generator=self.generator).split(batch_size)

    def learning_rate(self) -> float:
        """The first parameter group's learning rate now (the curves' ``lr``)."""
        return float(self.optimizer.param_groups[0]["lr"])

    def after_evaluation(self, metrics: Mapping[str, float]) -> None:
        """A plateau schedule steps on the evaluation's ``val_loss``; a warm-up schedule follows
        the optimizer step instead (:meth:`optimise`)."""
        if isinstance(self.scheduler, ReduceLROnPlateau):
            self.scheduler.step(metrics["val_loss"])

    def snapshot(self) -> dict[str, Any]:
        """The model's state dict, or one per named part (the loop keeps a CPU copy,
        :func:`~sweeplab.trainers.loop.keep_copy`)."""
        if isinstance(self.model, nn.ModuleDict):
            return {name: part.state_dict() for name, part in self.model.items()}
        return self.model.state_dict()

    def predict_unlabelled(self) -> Any:
        """None by default: a task with a labelled test split scores it once after the search."""
        return None

    def close(self) -> None:
        """Give the trial's memory back: the model to the CPU, optimizer state dropped."""
        self.model.to("cpu")
        self.optimizer.state.clear()


def save_with_tokenizer(model: nn.Module, state: Mapping[str, Any], tokenizer: Any, folder: Path) -> None:
    """Load ``state`` into ``model`` and write both with ``save_pretrained``, so that the model
    class's ``from_pretrained(folder)`` (and ``AutoTokenizer``) load the checkpoint."""
    model.load_state_dict(state)
    with quiet_loaders():
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

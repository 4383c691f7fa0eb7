"""What the built-in trainers share (news, retrieval, sentiment).

:class:`ModelTrainer` is the common half of a :class:`~sweeplab.core.RoundTrainer`:
AdamW (by default with weight decay on weight matrices only, not on biases or LayerNorm weights,
the usual BERT / CLIP practice), a learning-rate schedule (a transformers warm-up schedule stepped
once per optimizer step, :func:`warmup_schedule`, or ReduceLROnPlateau stepped on the validation
loss, :func:`plateau_schedule`), gradient clipping, mixed precision (a ``GradScaler`` for fp16),
the best state kept on the CPU, and the trial's memory given back at the end. A task's trainer
subclasses it, builds its model and data, and writes ``train_round`` (taking its batches from
:meth:`ModelTrainer.shuffled_batches`, calling :meth:`ModelTrainer.optimise` once per batch, its
losses summed by the round's :class:`LossTally`, :meth:`ModelTrainer.round_tally`) and
``evaluate`` (class probabilities read back once by :func:`class_probabilities`). Every built-in
trainer runs under :func:`~sweeplab.trainers.loop.fit_and_close`.

Its resume state (:meth:`ModelTrainer.resume_state`) is the model, optimizer, scheduler, scaler,
the generators, the place in the epoch's data order, the loss tally of the round under way and
the trainer's counters (:attr:`ModelTrainer.counters`): a trial stopped between two batches and
resumed from it ends with the curve and value of one never stopped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from sweeplab.core import TrialEnv, stopping
from sweeplab.trainers.backbones import quiet_loaders
from sweeplab.trainers.device import autocast, compile_in_place
from sweeplab.trainers.loop import random_states, set_random_states

__all__ = ["BatchOrder", "LossTally", "ModelTrainer", "Schedule", "adamw", "class_probabilities", "decay_groups", "plateau_schedule",
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

    def state_dict(self) -> dict[str, Any]:
        """The sum so far (on the CPU), its weight and its steps."""
        return {"total": None if self.total is None else self.total.cpu(), "count": self.count, "steps": self.steps}

    def load_state_dict(self, state: Mapping[str, Any], device: torch.device) -> None:
        total = state["total"]
        self.total = None if total is None else total.to(device)
        self.count, self.steps = int(state["count"]), int(state["steps"])


class BatchOrder:
    """The order the training rows are visited in: a fresh permutation from the trial's
    ``generator`` every epoch, cut into batches, and the place in it. Before each batch it asks
    whether a stop was asked for (:func:`sweeplab.core.stopping.check`), so that a stop comes
    between two whole steps; its state, saved with the trial's, lets a resumed trial see the same
    batches from the same place."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator
        self.order: torch.Tensor | None = None  # the epoch under way
        self.position = 0  # batches of it taken
        self.batches = 0  # batches in it

    def done(self) -> float:
        """The share of the epoch under way that was taken (0 between epochs)."""
        return self.position / self.batches if self.order is not None and self.batches else 0.0

    def epoch(self, rows: int, batch_size: int) -> Iterator[torch.Tensor]:
        """The batches of row indices ``0 .. rows - 1`` left in the epoch under way, or in a new
        epoch's order (the last batch may be shorter)."""
        if self.order is None or len(self.order) != rows:
            self.order, self.position = torch.randperm(rows, generator=self.generator), 0
        batches = self.order.split(batch_size)
        self.batches = len(batches)
        while self.position < len(batches):
            stopping.check()
            self.position += 1
            yield batches[self.position - 1]
        self.order = None

    def state_dict(self) -> dict[str, Any]:
        return {"order": self.order, "position": self.position}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.order, self.position = state["order"], int(state["position"])


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
    inf check every step).

    :attr:`counters` names the attributes a subclass counts its progress in (``step``,
    ``epoch``), saved with the resume state."""

    counters: tuple[str, ...] = ()

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
        self.batch_order = BatchOrder(self.generator)
        self.tally: LossTally | None = None  # the round under way's

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

    def shuffled_batches(self, rows: int, batch_size: int) -> Iterator[torch.Tensor]:
        """The batches left in the epoch under way of the row indices ``0 .. rows - 1``, in an
        order from the trial's generator (:class:`BatchOrder`): a new epoch's, or the rest of the
        epoch a resumed trial was stopped in."""
        return self.batch_order.epoch(rows, batch_size)

    def round_tally(self) -> LossTally:
        """The loss tally of the round that starts: the one a resumed trial was stopped in, or a
        new one. ``train_round`` ends the round with :meth:`end_round`."""
        if self.tally is None:
            self.tally = LossTally()
        return self.tally

    def end_round(self) -> float:
        """The round's mean training loss; the next round starts a new tally."""
        tally, self.tally = self.round_tally(), None
        return tally.mean()

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

    def resume_state(self) -> dict[str, Any]:
        """What a later attempt needs to go on exactly where this one is (see the module
        docstring); live tensors, written out before training goes on."""
        return {"model": self.snapshot(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "generator": self.generator.get_state(), "order": self.batch_order.state_dict(),
                "tally": None if self.tally is None else self.tally.state_dict(), "random": random_states(),
                "counters": {name: getattr(self, name) for name in self.counters}}

    def resume_point(self) -> float:
        """Where training stands on the curves' x axis: the first of :attr:`counters` (the
        optimizer step), or for ``epoch`` the epochs done and the share of the next one."""
        if not self.counters:
            return 0.0
        point = float(getattr(self, self.counters[0]))
        return point + self.batch_order.done() if self.counters[0] == "epoch" else point

    def load_resume_state(self, state: Mapping[str, Any]) -> None:
        """Go on from ``state``, a :meth:`resume_state` of an earlier attempt of this trial; a
        model whose shapes changed since raises (``load_state_dict``)."""
        if isinstance(self.model, nn.ModuleDict):
            if set(state["model"]) != set(self.model):
                raise ValueError(f"the saved model has parts {sorted(state['model'])}, this one {sorted(self.model)}")
            for name, part in self.model.items():
                part.load_state_dict(state["model"][name])
        else:
            self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.generator.set_state(state["generator"])
        self.batch_order.load_state_dict(state["order"])
        if state["tally"] is not None:
            self.tally = LossTally()
            self.tally.load_state_dict(state["tally"], self.device)
        set_random_states(state["random"])
        for name, value in state["counters"].items():
            setattr(self, name, value)

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

"""The same news trial through sweeplab and through a plain PyTorch loop, side by side: the ratio
of their epoch times (goal: at most 1.05).

Both sides train the same model (a random BERT with the bert-base-chinese vocabulary, written at
run time: ``small`` is 256 x 2 layers for a CPU, ``base`` BERT-base's 768 x 12) on the same rows
(read by sweeplab's reader; the packaged 2,000-title sample, or ``--data-dir``), with the same
batch size, maximum length, AdamW and weight decay on weight matrices, linear schedule with
warm-up, gradient clipping, precision (``auto``: bf16 autocast on a GPU, fp32 on a CPU) and one
evaluation on the validation split per epoch.

* sweeplab: a real one-trial sweep of the ``news`` task (``sweep run news --trials 1 --set
  model=DIR ...``) in its own store, every parameter fixed; an epoch is the time between two
  evaluations as the sweep's observer hears them (training, evaluation with every metric,
  curve points to MLflow), the first from the trial's start (its model built).
* the loop: what a careful user writes: a ``DataLoader`` padding each batch to its longest title
  (pinned memory and non-blocking copies on a GPU), ``torch.optim.AdamW`` fused into one kernel
  (``--loop-adamw default``: torch's default implementation, a per-parameter loop on a CPU), no
  ``.item()`` per step, the accuracy and loss read once per evaluation.

The sides alternate (loop first in even repeats, sweeplab first in odd ones), so that a machine
that speeds up or slows down during the run weighs on both. Checkpoints are off on both sides by
default (``--checkpoints none``): the loop keeps none. The program prints the epoch times and
the ratios of their median, mean and minimum (on a machine shared with other work, single
epochs can take several times as long: the median and minimum are the robust figures); it
asserts nothing.

    python benchmarks/trial_speed.py                                   # CPU: small model, packaged sample
    python benchmarks/trial_speed.py --size base --data-dir DIR --max-length 64 --epochs 2 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from news_setup import fixed_space, write_random_bert  # noqa: E402


class _Clock:
    """A sweep observer that notes when the trial's training starts and each evaluation ends."""

    def __init__(self) -> None:
        self.marks: list[float] = []
        self.accuracy: float | None = None

    def sweep_started(self, study: str, total: int, done: int) -> None:
        pass

    def trial_started(self, number: int, config: Mapping[str, Any], rounds: int) -> None:
        self.marks = [time.perf_counter()]

    def evaluated(self, number: int, step: int, metrics: Mapping[str, float]) -> None:
        self.marks.append(time.perf_counter())
        self.accuracy = metrics.get("val_accuracy")

    def trial_finished(self, number: int, state: str, value: float | None, best: float | None) -> None:
        pass


def _settings(args: argparse.Namespace, model_dir: Path) -> dict[str, Any]:
    return {"model": str(model_dir), "epochs": args.epochs, "batch_size": args.batch_size, "max_length": args.max_length,
            "lr": args.lr, "warmup_ratio": 0.06, "weight_decay": 0.01, "max_grad_norm": 1.0, "eval_every": 0,
            "eval_batch_size": 256}


def sweeplab_trial(args: argparse.Namespace, model_dir: Path, data_dir: Path, root: Path, run: int) -> dict[str, Any]:
    """One trial through ``run_sweep``; its epoch times, accuracy and whole wall time."""
    from sweeplab.sweeps.driver import run_sweep
    from sweeplab.sweeps.options import SweepOptions

    space = fixed_space(root / "fixed.toml", _settings(args, model_dir))
    options = SweepOptions.of("news", trials=1, space=str(space), data_dir=data_dir, sampler="random", pruner="none",
                              early_stop=False, plots=False, checkpoints=args.checkpoints, store_dir=root / f"store-{run}",
                              cache_dir=root / "cache", device=args.device, precision=args.precision,
                              **({"compile": True} if args.compile else {}))
    clock = _Clock()
    start = time.perf_counter()
    run_sweep(options, clock)
    wall = time.perf_counter() - start
    return {"epochs": [b - a for a, b in zip(clock.marks, clock.marks[1:])], "val_accuracy": clock.accuracy, "wall": wall}


def plain_trial(args: argparse.Namespace, model_dir: Path, data_dir: Path) -> dict[str, Any]:
    """The same trial as a plain PyTorch loop (see the module docstring)."""
    import torch
    from torch.utils.data import DataLoader
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_scheduler
    from transformers.utils import logging as hf_logging

    from sweeplab.datasets.news import read_news

    start = time.perf_counter()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    if args.precision == "auto" and device.type == "cuda":
        dtype = torch.bfloat16
    data = read_news(data_dir, "auto", 0, 0.2)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pad = tokenizer.pad_token_id or 0

    def rows(split: Any) -> list[tuple[list[int], int]]:
        ids = tokenizer(split.texts, truncation=True, max_length=args.max_length)["input_ids"]
        return list(zip(ids, split.labels))

    def collate(batch: list[tuple[list[int], int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        for i, (ids, _) in enumerate(batch):
            input_ids[i, : len(ids)] = torch.tensor(ids)
        return input_ids, (input_ids != pad).long(), torch.tensor([label for _, label in batch])

    pin = device.type == "cuda"
    generator = torch.Generator().manual_seed(0)
    train = DataLoader(rows(data.train), batch_size=args.batch_size, shuffle=True, collate_fn=collate, pin_memory=pin,
                       generator=generator)
    val = DataLoader(rows(data.val), batch_size=256, collate_fn=collate, pin_memory=pin)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=len(data.classes)).to(device)
    if args.compile:
        model.compile()
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.01},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=args.lr, **({"fused": True} if args.loop_adamw == "fused" else {}))
    total = args.epochs * len(train)
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=round(0.06 * total), num_training_steps=total)

    def autocast() -> Any:
        return torch.autocast(device.type, dtype=dtype) if dtype is not None else torch.autocast(device.type, enabled=False)

    marks = [time.perf_counter()]
    accuracy = None
    for _ in range(args.epochs):
        model.train()
        loss_sum = torch.zeros((), device=device)
        for input_ids, mask, labels in train:
            input_ids, mask = input_ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            with autocast():
                logits = model(input_ids=input_ids, attention_mask=mask).logits
            loss = torch.nn.functional.cross_entropy(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach()
        model.eval()
        correct = torch.zeros((), device=device)
        val_loss = torch.zeros((), device=device)
        with torch.no_grad():
            for input_ids, mask, labels in val:
                input_ids, mask = input_ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                with autocast():
                    logits = model(input_ids=input_ids, attention_mask=mask).logits.float()
                correct += (logits.argmax(-1) == labels).sum()
                val_loss += torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
        accuracy = correct.item() / len(data.val)  # one read per evaluation, as the train loss below
        _ = (loss_sum / len(train)).item(), val_loss.item() / len(data.val)
        marks.append(time.perf_counter())
    return {"epochs": [b - a for a, b in zip(marks, marks[1:])], "val_accuracy": accuracy, "wall": time.perf_counter() - start}


def _summary(runs: list[dict[str, Any]]) -> dict[str, float]:
    every = [t for r in runs for t in r["epochs"]]
    later = [t for r in runs for t in r["epochs"][1:]] or every
    return {"epoch_mean": statistics.fmean(every), "epoch_median": statistics.median(every), "epoch_min": min(every),
            "first_epoch_mean": statistics.fmean(r["epochs"][0] for r in runs),
            "later_epochs_mean": statistics.fmean(later), "wall_mean": statistics.fmean(r["wall"] for r in runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("small", "base"), default="small", help="the random BERT's size")
    parser.add_argument("--data-dir", type=Path, default=None, help="THUCNews-titles or cnews folder (default: the packaged sample)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--repeats", type=int, default=2, help="trials per side, the order alternating")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model on both sides")
    parser.add_argument("--loop-adamw", choices=("fused", "default"), default="fused",
                        help="the loop's AdamW: fused (as sweeplab's) or torch's default implementation")
    parser.add_argument("--checkpoints", default="none", help="sweeplab's --checkpoints (the loop keeps none)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()

    from sweeplab.trainers.news import TASK

    data_dir = args.data_dir or TASK.sample_data
    results: dict[str, list[dict[str, Any]]] = {"loop": [], "sweeplab": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = write_random_bert(root / "model", args.size)
        for run in range(args.repeats):
            for side in (("loop", "sweeplab") if run % 2 == 0 else ("sweeplab", "loop")):
                figures = (plain_trial(args, model_dir, data_dir) if side == "loop"
                           else sweeplab_trial(args, model_dir, data_dir, root, run))
                results[side].append(figures)
                epochs = ", ".join(f"{t:.2f}" for t in figures["epochs"])
                print(f"{side:8s} run {run}: epochs {epochs} s; val_accuracy {figures['val_accuracy']:.4f}; "
                      f"whole trial {figures['wall']:.1f} s", flush=True)
                if args.out:
                    args.out.write_text(json.dumps({"args": vars(args) | {"data_dir": str(data_dir)}, "runs": results},
                                                   indent=2, default=str), encoding="utf-8")
    loop, ours = _summary(results["loop"]), _summary(results["sweeplab"])
    for stat in ("median", "mean", "min"):
        print(f"{stat} epoch: loop {loop['epoch_' + stat]:.3f} s, sweeplab {ours['epoch_' + stat]:.3f} s; "
              f"ratio {ours['epoch_' + stat] / loop['epoch_' + stat]:.3f} (goal <= 1.05)")
    print(f"first epoch: ratio {ours['first_epoch_mean'] / loop['first_epoch_mean']:.3f}; "
          f"later epochs: ratio {ours['later_epochs_mean'] / loop['later_epochs_mean']:.3f}; "
          f"whole trial (data, model, store included): ratio {ours['wall_mean'] / loop['wall_mean']:.3f}")
    if args.out:
        args.out.write_text(json.dumps({"args": vars(args) | {"data_dir": str(data_dir)}, "runs": results,
                                        "summary": {"loop": loop, "sweeplab": ours}}, indent=2, default=str), encoding="utf-8")


if __name__ == "__main__":
    main()

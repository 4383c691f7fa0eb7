"""What saving a trial's resume state costs: the news BERT on this machine, trained with and
without resume-state saves, in one run.

A trial saves its resume state (model, optimizer, scheduler, scaler, generators, place in the
data, curve and the best evaluation's kept state; :mod:`sweeplab.core.resume`) every
``--checkpoint-minutes`` of training, at the first evaluation after that is due. This program
trains the same news trial twice through the real trainer and loop (:func:`sweeplab.trainers.loop.fit`):
without a resume state, saving it at every evaluation, and without again (the worst case: a save per
``--eval-every`` steps), to a file in a temporary folder written as a sweep writes it
(:class:`sweeplab.trainers.resume_file.ResumeFile`: ``torch.save``, ``fsync``, rename). It
prints the size and time of a save and of a load, the training time, and the overhead as a share
of the training time: measured (every evaluation) and at the default interval (one save per 10
minutes: save time / 600 s).

    python benchmarks/resume_cost.py                   # BERT-base shape (768 x 12), batch 32, 40 steps
    python benchmarks/resume_cost.py --hidden 256 --layers 2 --heads 4 --steps 100
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from sweeplab.core import Resumption, TrialEnv
from sweeplab.datasets.cache import PrepCache
from sweeplab.trainers import news
from sweeplab.trainers.loop import fit
from sweeplab.trainers.resume_file import ResumeFile


class _Quiet:
    def on_start(self, rounds: int) -> None:
        pass

    def on_eval(self, step: int, metrics: Mapping[str, float]) -> bool:
        return False


class _Timed(ResumeFile):
    """A resume file that times its saves."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.seconds: list[float] = []

    def save(self, state: Any) -> None:
        start = time.perf_counter()
        super().save(state)
        self.seconds.append(time.perf_counter() - start)


def _train(config: Mapping[str, Any], cache: PrepCache, loaded: Any, resume: Resumption | None) -> float:
    env = TrialEnv(device=torch.device("cpu"), precision="fp32", cache=cache, seed=0, trial_seed=1, early_stop=None,
                   resume=resume)
    trainer = news._NewsTrainer(loaded, config, env)
    start = time.perf_counter()
    fit(trainer, trainer.rounds, _Quiet(), "val_accuracy", resume=resume)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per trial")
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = news.TASK.load(news.TASK.sample_data, 0, 0.2, news.TASK.defaults)
    rows = len(loaded.payload.train.texts)
    epochs = max(1, -(-args.steps * args.batch // rows))
    config = {**news.TASK.defaults, "model": "scratch", "hidden_size": args.hidden, "layers": args.layers,
              "heads": args.heads, "batch_size": args.batch, "epochs": epochs, "eval_every": args.eval_every,
              "max_length": 32, "eval_batch_size": 128}
    with tempfile.TemporaryDirectory() as folder:
        cache = PrepCache(Path(folder) / "cache")
        before = _train(config, cache, loaded, None)
        file = _Timed(Path(folder) / "resume" / "trial-0.pt")
        saving = _train(config, cache, loaded, Resumption(file, every_seconds=1e-9))
        after = _train(config, cache, loaded, None)  # before and after: drift on a shared machine shows
        plain = (before + after) / 2
        size = file.path.stat().st_size
        start = time.perf_counter()
        state = file.load()
        load = time.perf_counter() - start
    steps = epochs * -(-rows // args.batch)
    parameters = sum(t.numel() for t in state["trainer"]["model"].values())
    save = sum(file.seconds) / len(file.seconds)
    print(f"news BERT {args.hidden}x{args.layers} ({parameters / 1e6:.1f}M parameters), batch {args.batch}, "
          f"{steps} steps, evaluated every {args.eval_every}; torch threads {torch.get_num_threads()}")
    print(f"resume state: {size / 2**20:.0f} MiB; save {save:.2f} s (mean of {len(file.seconds)}), load {load:.2f} s")
    print(f"training without saves: {plain:.1f} s (runs before and after: {before:.1f} s, {after:.1f} s); saving at every evaluation: {saving:.1f} s "
          f"(+{(saving - plain) / plain:.1%}; the saves alone {sum(file.seconds) / plain:.1%} of the training time)")
    print(f"at the default --checkpoint-minutes 10: one save per 600 s of training = {save / 600:.2%} of it")


if __name__ == "__main__":
    main()

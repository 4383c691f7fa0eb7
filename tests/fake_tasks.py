"""Tasks with no data whose trainers the tests script, for driving the real sweep engine."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sweeplab.core import Evaluation, Loaded, Task
from sweeplab.core.data_report import ReadReport
from sweeplab.sweeps.driver import run_sweep
from sweeplab.sweeps.options import SweepOptions
from sweeplab.tasks import register, task_names


class Replay:
    """A trainer that replays a falling loss and a rising accuracy, one point per epoch."""

    def __init__(self, epochs: int) -> None:
        self.epoch, self.epochs = 0, epochs

    def train_round(self) -> tuple[int, float]:
        self.epoch += 1
        return self.epoch, 1.0 / self.epoch

    def evaluate(self) -> Evaluation:
        return Evaluation({"val_loss": 1.0 / self.epoch, "val_accuracy": self.epoch / 10})

    def snapshot(self) -> dict:
        return {}

    def predict_unlabelled(self) -> None:
        return None

    def after_evaluation(self, metrics: Mapping[str, float]) -> None:
        pass


def make_task(name: str, fit_fn: Any) -> Task:
    """A task with no data whose fit is ``fit_fn``, for driving the real sweep engine."""
    return Task(
        name=name, summary="test task", metric="val_accuracy", direction="maximize",
        defaults={"x": 0.0}, default_space="", sample_data=Path("."),
        load=lambda d, s, v, settings: Loaded(payload=None, reports=(ReadReport("none"),), fingerprint="f"),
        prepare=lambda loaded, config, env: None, fit=fit_fn,
    )


def sweep_task(task: Task, tmp_path: Path, trials: int, space_text: str = "[search.x]\nlow = 0.0\nhigh = 1.0\n",
               **options: Any) -> Any:
    """Register ``task`` (once) and sweep it over ``space_text`` (by default one float), in its own
    store and experiment."""
    if task.name not in task_names():
        register(task)
    space = tmp_path / "space.toml"
    space.write_text(space_text, encoding="utf-8")
    return run_sweep(SweepOptions.of(task.name, trials=trials, space=str(space), store_dir=tmp_path / "store",
                                  plots=False, experiment=task.name, **options))

"""A training step reads nothing back from the device: no ``.item()`` / ``float()`` / ``bool()``
on what the model computed, per step (each would make the host wait for a GPU); the round's
mean loss is read once, and a loss that became NaN still ends the trial at the next evaluation.
``--compile`` compiles the trial's model in place, and the trial's run says so.

The model's output is wrapped, by a forward hook, in a tensor subclass that records every read
of its values, and every tensor computed from it (the loss, its detached copy, the round's
sum) is of that subclass too."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from sweeplab.core import TrialEnv
from sweeplab.datasets.cache import PrepCache
from sweeplab.datasets.shapes import write_shapes
from sweeplab.trainers.loop import fit
from sweeplab.trainers.news import TASK as NEWS
from sweeplab.trainers.news import _NewsTrainer
from sweeplab.trainers.retrieval import TASK as RETRIEVAL
from sweeplab.trainers.retrieval import _RetrievalTrainer

#: Tensor methods that copy a value back to the host (and wait for the device to compute it).
_READS = {"item", "__float__", "__int__", "__bool__", "__index__", "tolist", "cpu", "numpy"}


class Watched(torch.Tensor):
    """A tensor that records reads of its values in :attr:`reads`; what is computed from it is
    a ``Watched`` too (torch's default subclass handling)."""

    reads: list[str] = []

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: tuple = (), kwargs: Mapping[str, Any] | None = None) -> Any:
        name = getattr(func, "__name__", "")
        if name in _READS:
            cls.reads.append(name)
        return super().__torch_function__(func, types, args, kwargs or {})


def _watch_output(module: torch.nn.Module, attribute: str) -> None:
    """Make ``module``'s output ``attribute`` (``logits``, ``loss``) a :class:`Watched` tensor."""

    def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> Any:
        setattr(output, attribute, getattr(output, attribute).as_subclass(Watched))
        return output

    module.register_forward_hook(hook)


def _env(tmp_path: Path, metric: str) -> TrialEnv:
    return TrialEnv(device=torch.device("cpu"), precision="fp32", cache=PrepCache(tmp_path / "cache"), seed=0,
                    trial_seed=0, early_stop=None, metric=metric)


def _news(tmp_path: Path, eval_every: int) -> _NewsTrainer:
    loaded = NEWS.load(NEWS.sample_data, 0, 0.2, NEWS.defaults)
    config = {**NEWS.defaults, "hidden_size": 32, "layers": 1, "heads": 2, "batch_size": 32, "epochs": 1, "eval_every": eval_every}
    return _NewsTrainer(loaded, config, _env(tmp_path, "val_accuracy"))


@pytest.mark.parametrize("steps", [3, 12])
def test_a_news_round_reads_its_loss_once_whatever_its_steps(tmp_path: Path, steps: int) -> None:
    trainer = _news(tmp_path, steps)
    _watch_output(trainer.model, "logits")
    Watched.reads = []
    step, loss = trainer.train_round()
    assert step == steps and loss > 0
    assert Watched.reads == ["__float__"]  # the round's mean, read once: none per step


def test_a_retrieval_round_reads_its_loss_once(tmp_path: Path) -> None:
    folder = write_shapes(tmp_path / "shapes", {"train": 96, "valid": 16, "test": 16}, seed=1, image_size=32)
    loaded = RETRIEVAL.load(folder, 0, 0.2, RETRIEVAL.defaults)
    config = {**RETRIEVAL.defaults, "hidden_size": 32, "heads": 2, "text_layers": 1, "vision_layers": 1, "projection_dim": 16,
              "image_size": 32, "patch_size": 8, "batch_size": 16, "epochs": 1}
    trainer = _RetrievalTrainer(loaded, config, _env(tmp_path, "val_recall_mean"))
    _watch_output(trainer.model, "loss")
    Watched.reads = []
    trainer.train_round()  # 6 steps
    assert Watched.reads == ["__float__"]


class _Heard:
    def on_start(self, rounds: int) -> None:
        pass

    def on_eval(self, step: int, metrics: Mapping[str, float]) -> bool:
        return False


def test_a_loss_that_becomes_nan_ends_the_trial_at_the_next_evaluation(tmp_path: Path) -> None:
    trainer = _news(tmp_path, 4)
    original = trainer.train_round
    rounds = 0

    def poisoned() -> tuple[int, float]:
        nonlocal rounds
        rounds += 1
        if rounds == 2:  # from the second round on, every weight is NaN: so is every loss
            with torch.no_grad():
                for parameter in trainer.model.parameters():
                    parameter.fill_(float("nan"))
        return original()

    trainer.train_round = poisoned  # type: ignore[method-assign]
    result = fit(trainer, trainer.rounds, _Heard(), "val_accuracy")
    assert rounds == 2  # no third round
    assert result.stopped == "diverged" and "training loss is nan at step 8" in str(result.stop_reason)
    assert [p["step"] for p in result.history] == [4] and result.best == 0  # the good evaluation is kept


def test_compile_compiles_the_model_in_place_and_the_run_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    from tests.fake_tasks import Replay, make_task, sweep_task

    compiled: list[type] = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(type(self)))  # no real compiling
    trainer = _NewsTrainer(NEWS.load(NEWS.sample_data, 0, 0.2, NEWS.defaults),
                           {**NEWS.defaults, "hidden_size": 32, "layers": 1, "heads": 2, "epochs": 1},
                           replace(_env(tmp_path, "val_accuracy"), compile=True))
    assert compiled == [type(trainer.model)]
    assert next(iter(trainer.snapshot())).startswith("bert.")  # the checkpoint's keys as without compiling

    sweep_task(make_task("compiled", lambda loaded, config, env, reporter: fit(Replay(2), 2, reporter, "val_accuracy")),
               tmp_path, 1, sampler="random", device="cpu", compile=True)
    client = MlflowClient(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("compiled").experiment_id])
    assert {r.data.tags["sweeplab.role"]: r.data.tags.get("sweeplab.compile", r.data.params.get("compile")) for r in runs} == \
        {"trial": "true", "sweep": "True"}

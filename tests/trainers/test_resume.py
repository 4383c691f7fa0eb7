"""Resume state of the built-in trainers: a trial stopped part-way and resumed from its saved
state ends with the curve, value and kept state of one never stopped (on the CPU, to float
tolerance), whether it stopped at an evaluation (a kill after a save) or between two batches (a
stop signal); and the state is written so that a kill during the write leaves the old one."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

from sweeplab.core import Resumption, TrialEnv, stopping
from sweeplab.datasets.cache import PrepCache
from sweeplab.trainers import news, sentiment
from tests.checks import MemoryStore
from sweeplab.trainers.loop import StaleResumeState, fit
from sweeplab.trainers.resume_file import ResumeFile
from tests.conftest import make_sentiment_dir

TEXTCNN = {"model": "textcnn", "embedding_dim": 16, "filters": 8, "kernel_sizes": "2,3", "batch_size": 256,
           "epochs": 2, "eval_every": 3, "dropout": 0.3}
HEADS = {"text_model": "tiny", "image_model": "tiny", "image_size": 32, "max_length": 32, "lr": 1e-3, "epochs": 5,
         "batch_size": 16}  # three batches an epoch: a stop can fall inside one


class _Killed(Exception):
    """What a kill looks like to the test: the fit ends where it is."""


class _Reporter:
    def __init__(self, kill_after: int | None = None) -> None:
        self.kill_after, self.steps, self.resumed = kill_after, [], None

    def on_start(self, rounds: int) -> None:
        pass

    def on_eval(self, step: int, metrics: Mapping[str, float]) -> bool:
        self.steps.append(step)
        return False

    def on_resume(self, history: list[dict[str, float]], step: float) -> None:
        self.resumed = step


def _news(tmp_path: Path) -> Callable[[TrialEnv], Any]:
    loaded = news.TASK.load(news.TASK.sample_data, 0, 0.2, news.TASK.defaults)
    return lambda env: news._NewsTrainer(loaded, {**news.TASK.defaults, **TEXTCNN}, env)


def _sentiment(tmp_path: Path) -> Callable[[TrialEnv], Any]:
    loaded = sentiment.TASK.load(make_sentiment_dir(tmp_path / "data"), 0, 0.2, sentiment.TASK.defaults)
    return lambda env: sentiment._SentimentTrainer(loaded, {**sentiment.TASK.defaults, **HEADS}, env)


@pytest.fixture(params=[_news, _sentiment], ids=["news-textcnn", "sentiment-heads"])
def make_trainer(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[Resumption | None], Any]:
    build = request.param(tmp_path)
    cache = PrepCache(tmp_path / "cache")

    def make(resume: Resumption | None) -> Any:
        env = TrialEnv(device=torch.device("cpu"), precision="fp32", cache=cache, seed=0, trial_seed=7,
                       early_stop=None, resume=resume)
        return build(env), env

    return make


def _fit(make: Callable[[Resumption | None], Any], resume: Resumption | None, reporter: _Reporter) -> Any:
    trainer, env = make(resume)
    return fit(trainer, trainer.rounds if hasattr(trainer, "rounds") else int(trainer.config["epochs"]), reporter,
               env.metric, resume=resume)


def _same_fit(resumed: Any, whole: Any) -> None:
    assert [p["step"] for p in resumed.history] == [p["step"] for p in whole.history]
    for got, want in zip(resumed.history, whole.history):
        assert got.keys() == want.keys()
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert resumed.best == whole.best
    torch.testing.assert_close(resumed.state, whole.state, rtol=1e-5, atol=1e-6)  # nested: one state dict per part


def test_a_trial_killed_after_a_save_resumes_to_the_same_curve_and_state(make_trainer: Any) -> None:
    whole = _fit(make_trainer, None, _Reporter())
    store = MemoryStore()

    class Killing(_Reporter):
        def on_eval(self, step: int, metrics: Mapping[str, float]) -> bool:
            if len(self.steps) == 3:  # the fourth evaluation: the state of the third was saved
                raise _Killed
            return super().on_eval(step, metrics)

    with pytest.raises(_Killed):
        _fit(make_trainer, Resumption(store, every_seconds=1e-9), Killing())
    assert store.saves == 3
    reporter = _Reporter()
    resumed = _fit(make_trainer, Resumption(store, every_seconds=1e-9), reporter)
    assert reporter.resumed == whole.history[2]["step"]
    assert reporter.steps == [p["step"] for p in whole.history[3:]]  # each step once: the rest of the curve
    _same_fit(resumed, whole)


@pytest.mark.parametrize("at_step", [2, 5], ids=["in-the-first-round", "in-the-second-round"])
def test_a_stop_signal_between_two_batches_saves_there_and_resumes_to_the_same_curve(make_trainer: Any,
                                                                                     at_step: int) -> None:
    whole = _fit(make_trainer, None, _Reporter())
    store = MemoryStore()
    trainer, env = make_trainer(Resumption(store, every_seconds=3600))
    optimise, steps = trainer.optimise, []

    def optimise_then_signal(loss: torch.Tensor) -> torch.Tensor:
        steps.append(1)
        if len(steps) == at_step:  # before any evaluation, or within the second round (both trainers)
            stopping.request_stop(15)
        return optimise(loss)

    trainer.optimise = optimise_then_signal
    reporter = _Reporter()
    try:
        with pytest.raises(stopping.StoppedAtStep):
            fit(trainer, trainer.rounds if hasattr(trainer, "rounds") else int(trainer.config["epochs"]), reporter,
                env.metric, resume=env.resume)
    finally:
        stopping.clear()
    assert store.saves == 1 and len(steps) == at_step  # saved at once, not at the next evaluation
    reporter = _Reporter()
    resumed = _fit(make_trainer, Resumption(store, every_seconds=3600), reporter)
    assert reporter.resumed == pytest.approx(trainer.resume_point()) and reporter.resumed > 0  # where it stopped
    _same_fit(resumed, whole)


def test_a_state_that_no_longer_fits_the_model_is_refused_as_stale(tmp_path: Path) -> None:
    store = MemoryStore()
    build = _news(tmp_path)
    cache = PrepCache(tmp_path / "cache")
    loaded = news.TASK.load(news.TASK.sample_data, 0, 0.2, news.TASK.defaults)

    def run(filters: int, reporter: _Reporter) -> Any:
        env = TrialEnv(device=torch.device("cpu"), precision="fp32", cache=cache, seed=0, trial_seed=7, early_stop=None,
                       resume=Resumption(store, every_seconds=1e-9))
        trainer = news._NewsTrainer(loaded, {**news.TASK.defaults, **TEXTCNN, "filters": filters}, env)
        return fit(trainer, trainer.rounds, reporter, "val_accuracy", resume=env.resume)

    del build
    run(8, _Reporter())
    with pytest.raises(StaleResumeState, match="no longer loads"):
        run(12, _Reporter())  # the model was edited since: its shapes changed


def test_a_kill_during_the_write_leaves_the_state_saved_before(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = ResumeFile(tmp_path / "resume" / "trial-0.pt")
    file.save({"step": 1, "weights": torch.ones(3)})

    def dies_half_way(state: Any, target: Any) -> None:
        target.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # the process is stopped in the middle of the write

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        file.save({"step": 2, "weights": torch.zeros(3)})
    monkeypatch.undo()
    state = file.load()
    assert state["step"] == 1 and torch.equal(state["weights"], torch.ones(3))
    assert [p.name for p in file.path.parent.iterdir()] == ["trial-0.pt"]  # no partial file left
    file.delete()
    assert file.load() is None

"""Bring your own trainer: a user's function swept from the command line, by entry point and from
Python, read back from MLflow alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow import MlflowClient

import sweeplab
from sweeplab.errors import InternalError

#: The issue's example, verbatim.
MY_TRAINER = '''\
# my_trainer.py
def fit(config, report):
    w = 0.0
    for epoch in range(1, config["epochs"] + 1):
        w += config["lr"] * (1 - w)
        val_loss = (1 - w) ** 2 + 0.002 * epoch
        report(epoch, {"train_loss": (1 - w) ** 2, "val_loss": val_loss, "val_accuracy": 1 - val_loss})
'''
MY_SPACE = '''\
# my_trainer.toml
[search.lr]
low = 0.001
high = 1.0
log = true

[fixed]
epochs = 20
'''


def _sweep(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``sweep ARGS`` in a fresh process in ``cwd``, as a user runs it."""
    command = [sys.executable, "-m", "sweeplab", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})


def _trial_runs(client: MlflowClient, experiment: str) -> list[Any]:
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment}"
    return client.search_runs([found.experiment_id], filter_string="tags.`sweeplab.role` = 'trial'", max_results=100)


def _assert_trials_read_back(store: Path, experiment: str, finished: int, plots: bool = True) -> list[Any]:
    """``finished`` complete or pruned trial runs, each with its curve by step (and its plot); a
    complete one's best epoch is the argmax of its val_accuracy curve (ties to the earliest) and
    its value is the metric there."""
    client = MlflowClient(tracking_uri=f"sqlite:///{store / 'mlflow.db'}")
    runs = _trial_runs(client, experiment)
    states = [r.data.tags["sweeplab.state"] for r in runs]
    assert sum(s in ("complete", "pruned") for s in states) == finished, states
    assert all(r.info.status == "FINISHED" for r in runs)
    complete = [r for r in runs if r.data.tags["sweeplab.state"] == "complete"]
    assert complete
    for run in complete:
        curve = client.get_metric_history(run.info.run_id, "val_accuracy")
        steps = [m.step for m in curve]
        assert steps == list(range(1, len(steps) + 1))  # one point per reported epoch, by step
        values = [m.value for m in curve]
        best = values.index(max(values))
        assert run.data.metrics["best_epoch"] == steps[best]
        assert run.data.metrics["best_val_accuracy"] == pytest.approx(values[best])
        assert run.data.tags["sweeplab.metric"] == "val_accuracy"
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert "config.json" in artifacts and ("curves.png" in artifacts) == plots
    return runs


@pytest.mark.parametrize("workers", [1, 2])
def test_the_example_is_swept_from_its_folder_and_read_back(tmp_path: Path, workers: int) -> None:
    (tmp_path / "my_trainer.py").write_text(MY_TRAINER, encoding="utf-8")
    (tmp_path / "my_trainer.toml").write_text(MY_SPACE, encoding="utf-8")
    extra = ["--workers", "2"] if workers == 2 else []
    done = _sweep(["run", "my_trainer.py:fit", "--space", "my_trainer.toml", "--trials", "8", "--metric", "val_accuracy",
                   *extra], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = _assert_trials_read_back(tmp_path / "mlruns", "sweeplab-my_trainer.py:fit", finished=8)
    stopped = {r.data.tags["sweeplab.stopped"] for r in runs}
    assert "overfit" in stopped  # val_loss rises by 0.002 an epoch once w is near 1: each trial stops at its onset
    assert all("overfit_epoch" in r.data.metrics for r in runs if r.data.tags["sweeplab.stopped"] == "overfit")
    if workers == 2:
        assert len(list((tmp_path / "mlruns" / "workers").glob("worker-*.log"))) == 2

    # `sweep best` answers from the store without importing the trainer (or torch).
    code = ("import sys; from sweeplab.cli import app; sys.argv = ['sweep', 'best', '--task', 'my_trainer.py:fit', '--json']\n"
            "try:\n    app()\nexcept SystemExit:\n    pass\n"
            "print('imported:', sorted(m for m in ('torch', 'my_trainer') if m in sys.modules), file=sys.stderr)")
    best = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "imported: []" in best.stderr, best.stderr
    row = json.loads(best.stdout)[0]
    complete = [r for r in runs if r.data.tags["sweeplab.state"] == "complete"]
    assert row["metric"] == "best_val_accuracy"
    assert row["value"] == pytest.approx(max(r.data.metrics["best_val_accuracy"] for r in complete))
    status = _sweep(["status", "--json"], tmp_path)
    assert status.returncode == 0, status.stderr
    (sweep,) = json.loads(status.stdout)
    assert sweep["task"] == "my_trainer.py:fit" and sweep["status"] == "FINISHED"
    assert sweep["counts"]["complete"] + sweep["counts"]["pruned"] == 8
    assert sweep["best_value"] == pytest.approx(row["value"])
    # The MLflow UI opens the experiment in its model-training view, and the parent run's
    # description names the best trial with a link to its run.
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sweeplab-my_trainer.py:fit")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    note = client.get_run(sweep["run_id"]).data.tags["mlflow.note.content"]
    assert f"| 1 | [trial {row['trial']}](#/experiments/{experiment.experiment_id}/runs/{row['run_id']}?workflowType=machine_learning)" in note
    assert "compareRunsMode=CHART" in note
    assert f"**trials**: {sweep['counts']['complete']} complete" in note


def test_a_task_offered_by_an_installed_package_is_found_by_name(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "toypkg").mkdir(parents=True)
    (site / "toypkg" / "__init__.py").write_text(MY_TRAINER, encoding="utf-8")
    dist = site / "toypkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toypkg\nVersion: 0.1\n", encoding="utf-8")
    (dist / "entry_points.txt").write_text("[sweeplab.tasks]\ntoy = toypkg:fit\n", encoding="utf-8")
    work = tmp_path / "work"
    work.mkdir()
    (work / "toy.toml").write_text(MY_SPACE, encoding="utf-8")
    env = {"PYTHONPATH": str(site)}
    done = _sweep(["run", "toy", "--space", "toy.toml", "--trials", "3", "--metric", "val_accuracy"], work, env)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = _assert_trials_read_back(work / "mlruns", "sweeplab-toy", finished=3)
    assert {r.data.tags["sweeplab.task"] for r in runs} == {"toy"}
    unknown = _sweep(["run", "toys", "--trials", "1"], work, env)
    assert unknown.returncode == 2
    assert "toy," in unknown.stderr and "FILE.py:FUNCTION" in unknown.stderr  # the offered name is listed


def _write_stateful_trainer(folder: Path) -> Path:
    """A trainer that keeps a tensor as its state and ignores what report() answers."""
    path = folder / "stateful.py"
    path.write_text(textwrap.dedent('''\
        import torch
        import sweeplab

        CALLS = []

        @sweeplab.trainer(name="stateful", metric="val_accuracy")
        def fit(config, report):
            w = torch.zeros(3)
            for epoch in range(1, config["epochs"] + 1):
                CALLS.append(epoch)
                w += config["lr"]
                accuracy = min(epoch, 4) / 10 - 0.01 * max(0, epoch - 4)   # best at epoch 4
                val_loss = 1 / epoch if epoch <= 4 else 0.25 + 0.1 * (epoch - 4)  # rises after epoch 4
                report(epoch, {"val_loss": val_loss, "val_accuracy": accuracy}, state={"w": w, "epoch": epoch})
    '''), encoding="utf-8")
    return path


def test_from_python_the_best_state_is_the_checkpoint_and_an_ignored_stop_ends_the_trial(tmp_path: Path,
                                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _write_stateful_trainer(tmp_path)
    space = tmp_path / "space.toml"
    space.write_text("[search.lr]\nlow = 0.1\nhigh = 0.2\n\n[fixed]\nepochs = 12\n", encoding="utf-8")
    sys.path.insert(0, str(tmp_path))
    try:
        import stateful  # the user's module, as a notebook would import it
    finally:
        sys.path.remove(str(tmp_path))
    outcome = sweeplab.run(stateful.fit, space=space, trials=2, pruner="none", plots=False)
    assert outcome.counts["complete"] == 2
    # The onset (GL_5: val_loss 40 % above its best) is seen at epoch 5; the function ignores
    # the answer, is stopped by its next report, and no later epoch is recorded.
    rows = sweeplab.best("stateful", top=2)
    assert [r.summary["best_epoch"] for r in rows] == [4.0, 4.0]
    assert all(r.summary["epochs_run"] == 5 for r in rows)
    assert all(r.overfit != "none" for r in rows)
    # The sweep ran this module's function (a file imported once is not imported again): each
    # trial was told to stop at epoch 5 and ended at its next report, epoch 6, of 12.
    assert stateful.CALLS == [*range(1, 7), *range(1, 7)]
    client = MlflowClient(tracking_uri=outcome.tracking_uri)
    folder = client.download_artifacts(rows[0].run_id, "checkpoint", str(tmp_path / "downloaded"))
    saved = torch.load(Path(folder) / "model.pt", weights_only=False)
    assert saved["state_dict"]["epoch"] == 4 and saved["best_step"] == 4
    lr = float(rows[0].params["lr"])
    assert torch.allclose(saved["state_dict"]["w"], torch.full((3,), 4 * lr))  # kept at epoch 4, not changed later
    assert [s.task for s in sweeplab.status()] == ["stateful"]
    fresh = _sweep(["best", "--task", "stateful", "--json"], tmp_path)  # the declared name, in a fresh process
    assert fresh.returncode == 0, fresh.stderr
    assert json.loads(fresh.stdout)[0]["run_id"] == rows[0].run_id


def test_a_bug_in_sweeplabs_summary_code_stops_the_sweep_instead_of_failing_trials(tmp_path: Path,
                                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_trainer.py").write_text(MY_TRAINER, encoding="utf-8")
    (tmp_path / "my_trainer.toml").write_text(MY_SPACE, encoding="utf-8")

    def broken_summary(*args: Any, **kwargs: Any) -> Any:
        raise ZeroDivisionError("injected into the summary")

    monkeypatch.setattr("sweeplab.sweeps.trial.summarise", broken_summary)
    with pytest.raises(InternalError, match=r"trial 0: sweeplab failed \(ZeroDivisionError") as caught:
        sweeplab.run("my_trainer.py:fit", space="my_trainer.toml", trials=4, plots=False)
    log = tmp_path / "mlruns" / "logs" / "errors.log"
    assert str(log) in str(caught.value)
    assert "injected into the summary" in log.read_text(encoding="utf-8") and "Traceback" in log.read_text(encoding="utf-8")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    runs = _trial_runs(client, "sweeplab-my_trainer.py:fit")
    assert len(runs) == 1  # no second trial was started
    assert runs[0].data.tags["sweeplab.state"] == "failed"
    assert runs[0].data.tags["sweeplab.fail_reason"].startswith("internal error: ZeroDivisionError")
    (parent,) = client.search_runs([runs[0].info.experiment_id], filter_string="tags.`sweeplab.role` = 'sweep'")
    assert parent.info.status != "RUNNING"

    monkeypatch.undo()  # fixed: the same command resumes and finishes the sweep
    monkeypatch.chdir(tmp_path)
    outcome = sweeplab.run("my_trainer.py:fit", space="my_trainer.toml", trials=4, plots=False)
    assert outcome.counts["complete"] + outcome.counts["pruned"] == 4


def test_an_error_the_trainer_raises_fails_its_trial_and_the_sweep_goes_on(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "flaky.py").write_text(textwrap.dedent('''\
        def fit(config, report):
            if config["lr"] > 0.5:
                raise ValueError("lr too high for this model")
            report(1, {"val_loss": 1 - config["lr"]})
    '''), encoding="utf-8")
    (tmp_path / "space.toml").write_text("[search.lr]\nchoices = [0.1, 0.9]\n", encoding="utf-8")
    outcome = sweeplab.run("flaky.py:fit", space="space.toml", trials=3, sampler="grid", plots=False)
    assert outcome.counts["complete"] == 1 and outcome.counts["failed"] == 1  # the grid's two cells
    client = MlflowClient(tracking_uri=outcome.tracking_uri)
    failed = [r for r in _trial_runs(client, "sweeplab-flaky.py:fit") if r.data.tags["sweeplab.state"] == "failed"]
    assert failed[0].data.tags["sweeplab.fail_reason"] == "ValueError: lr too high for this model"


def test_what_a_trainer_gets_wrong_fails_its_trial_and_the_sweep_goes_on(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """sys.exit() in a trainer, and a state that cannot be saved, are the trainer's failures."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "wrong.py").write_text(textwrap.dedent('''\
        import sys

        def fit(config, report):
            if config["kind"] == "exit":
                sys.exit(3)
            class Local:  # an object pickle cannot find again
                pass
            state = {"obj": Local()} if config["kind"] == "unpicklable" else {"w": 1}
            report(1, {"val_loss": 0.5}, state=state)
    '''), encoding="utf-8")
    (tmp_path / "space.toml").write_text('[search.kind]\nchoices = ["exit", "unpicklable", "ok"]\n', encoding="utf-8")
    outcome = sweeplab.run("wrong.py:fit", space="space.toml", trials=3, sampler="grid", plots=False, checkpoints="all")
    assert outcome.counts["complete"] == 1 and outcome.counts["failed"] == 2
    client = MlflowClient(tracking_uri=outcome.tracking_uri)
    runs = {r.data.params["kind"]: r for r in _trial_runs(client, "sweeplab-wrong.py:fit")}
    assert runs["exit"].data.tags["sweeplab.fail_reason"] == "RuntimeError: the training function called sys.exit(3)"
    assert "pickle" in runs["unpicklable"].data.tags["sweeplab.fail_reason"].lower()
    assert all(r.info.status != "RUNNING" for r in runs.values())


def test_a_metric_name_mlflow_refuses_is_one_line_and_stops_every_worker(tmp_path: Path) -> None:
    (tmp_path / "badname.py").write_text("def fit(config, report):\n    report(1, {'val_loss': 1.0, 'val@acc': 0.5})\n",
                                         encoding="utf-8")
    (tmp_path / "space.toml").write_text(MY_SPACE, encoding="utf-8")
    done = _sweep(["run", "badname.py:fit", "--space", "space.toml", "--trials", "6", "--workers", "2"], tmp_path)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "reported metric 'val@acc': expected letters, digits" in done.stderr
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    runs = _trial_runs(client, "sweeplab-badname.py:fit")
    assert 1 <= len(runs) <= 2  # each worker stopped at its first trial; none was replaced
    assert all(r.info.status != "RUNNING" for r in runs)


def test_a_grid_cell_failed_by_sweeplabs_own_error_runs_again_on_resume(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "grid.py").write_text("def fit(config, report):\n    report(1, {'val_loss': 1 - config['lr']})\n",
                                      encoding="utf-8")
    (tmp_path / "grid.toml").write_text("[search.lr]\nchoices = [0.1, 0.3, 0.2]\n", encoding="utf-8")
    from sweeplab.sweeps import trial

    real = trial.summarise

    def breaks_on_the_best_cell(history: Any, *args: Any, **kwargs: Any) -> Any:
        if history[0]["val_loss"] == pytest.approx(0.7):
            raise ZeroDivisionError("injected")
        return real(history, *args, **kwargs)

    monkeypatch.setattr(trial, "summarise", breaks_on_the_best_cell)
    with pytest.raises(InternalError):
        sweeplab.run("grid.py:fit", space="grid.toml", trials=3, sampler="grid", plots=False, seed=1)
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    outcome = sweeplab.run("grid.py:fit", space="grid.toml", trials=3, sampler="grid", plots=False, seed=1)
    assert outcome.counts["complete"] == 3
    assert outcome.best_value == pytest.approx(0.7)  # the cell that met the error ran again


def test_a_script_that_sweeps_its_own_function_runs_once_and_workers_do_not_rerun_it(tmp_path: Path) -> None:
    body = textwrap.dedent('''\
        import sweeplab

        print("module body as", __name__, flush=True)
        CALLS = []

        def fit(config, report):
            CALLS.append(config["lr"])
            report(1, {"val_loss": 1 - config["lr"]})

        {call}
    ''')
    (tmp_path / "space.toml").write_text("[search.lr]\nlow = 0.1\nhigh = 0.9\n", encoding="utf-8")
    guarded = 'if __name__ == "__main__":\n    sweeplab.run(fit, space="space.toml", trials=2, plots=False)\n    print("calls", len(CALLS))'
    (tmp_path / "guarded.py").write_text(body.replace("{call}", guarded), encoding="utf-8")
    done = subprocess.run([sys.executable, "guarded.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("module body as") == 1 and "calls 2" in done.stdout  # the script's own function ran

    unguarded = 'sweeplab.run(fit, space="space.toml", trials=2, plots=False, workers=2, study="w")'
    (tmp_path / "unguarded.py").write_text(body.replace("{call}", unguarded), encoding="utf-8")
    done = subprocess.run([sys.executable, "unguarded.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert 'put the call under `if __name__ == "__main__":`' in done.stderr
    logs = list((tmp_path / "mlruns" / "workers").glob("worker-*.log"))
    assert logs and all(log.read_text(encoding="utf-8").count("module body as") == 1 for log in logs)  # no deeper workers


def test_a_store_that_fails_the_description_does_not_keep_the_sweep_from_closing(tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from sweeplab.errors import Unreachable

    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_trainer.py").write_text(MY_TRAINER, encoding="utf-8")
    (tmp_path / "my_trainer.toml").write_text(MY_SPACE, encoding="utf-8")

    def away(*args: Any, **kwargs: Any) -> Any:
        raise Unreachable("the MLflow tracking store stayed unreachable (injected)")

    monkeypatch.setattr("sweeplab.sweeps.closing.best_trials", away)
    outcome = sweeplab.run("my_trainer.py:fit", space="my_trainer.toml", trials=2, plots=False)
    parent = MlflowClient(tracking_uri=outcome.tracking_uri).get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED" and "mlflow.note.content" not in parent.data.tags

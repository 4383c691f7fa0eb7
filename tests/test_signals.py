"""SIGTERM, SIGHUP and SIGUSR1 stop a sweep the way Ctrl-C does: the running trial saves its
resume state at its next step and closes as interrupted with its points written, the parent run
is closed, the command exits 128 + the signal's number, and the same command resumes, the
interrupted trial from its resume state."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from sweeplab.core import stopping
from sweeplab.sweeps import signals
from sweeplab.sweeps.signals import STOP_SIGNALS, Stopped, stop_at_next_step, stop_on_signals
from tests.checks import wait_for
from tests.storages import SweepStorage

#: A trainer of 30 slow epochs while the file ``slow`` is beside it, of quick ones after, that
#: hands over its resume state (the epoch) and goes on from it.
TRAINER = textwrap.dedent('''\
    import pathlib, time

    def fit(config, report):
        here = pathlib.Path(__file__).parent
        start = 1 if report.resumed is None else report.resumed.state["epoch"] + 1
        for epoch in range(start, 31):
            if (here / "slow").exists():
                (here / "started").touch()
                time.sleep(0.2)
            report(epoch, {"val_loss": 1 / epoch, "val_accuracy": config["lr"] * epoch / 30}, resume={"epoch": epoch})
''')


@pytest.mark.parametrize("signum", STOP_SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_a_stop_signal_raises_once_in_the_main_thread_and_handlers_come_back(signum: int) -> None:
    before = signal.getsignal(signum)
    with pytest.raises(Stopped) as caught, stop_on_signals():
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the signal lands at the next bytecode: never reached
    assert caught.value.exit_code == 128 + signum and str(caught.value) == f"stopped by {signal.Signals(signum).name}"
    assert signal.getsignal(signum) == before


def test_a_second_signal_does_not_cut_the_first_ones_clean_up_short() -> None:
    cleaned = False
    with pytest.raises(Stopped), stop_on_signals():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # while the first is handled: ignored
            time.sleep(0.05)
            cleaned = True
    assert cleaned


def test_while_a_trial_trains_a_signal_asks_for_its_next_step_and_the_grace_interrupts_one_that_never_comes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signals, "GRACE_SECONDS", 0.2)
    with pytest.raises(Stopped) as caught, stop_on_signals(), stop_at_next_step():
        os.kill(os.getpid(), signal.SIGTERM)
        assert stopping.requested() == signal.SIGTERM  # asked for, not raised
        time.sleep(5)  # a step that never ends: the grace timer interrupts it
    assert not isinstance(caught.value, stopping.StoppedAtStep) and caught.value.exit_code == 143
    assert stopping.requested() is None  # forgotten with the handlers


def test_a_trial_that_answers_at_its_next_step_is_given_the_time_its_save_takes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(signals, "GRACE_SECONDS", 0.2)
    with stop_on_signals(), stop_at_next_step():
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(stopping.StoppedAtStep):
            stopping.check()  # the next step: the trial stops here
        time.sleep(0.5)  # its save, past the grace: no interruption cuts it short


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-workers"])
def test_sigterm_stops_the_sweep_as_ctrl_c_does_and_the_same_command_resumes(tmp_path: Path, workers: int) -> None:
    (tmp_path / "slow_fit.py").write_text(TRAINER, encoding="utf-8")
    (tmp_path / "space.toml").write_text("[search.lr]\nlow = 0.1\nhigh = 1.0\n", encoding="utf-8")
    (tmp_path / "slow").touch()
    command = [sys.executable, "-m", "sweeplab", "run", "slow_fit.py:fit", "--space", "space.toml", "--trials", "2",
               "--pruner", "none", "--no-plots", "--workers", str(workers)]
    env = {**os.environ, "COLUMNS": "200"}
    sweep = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for("a trial training", lambda: True if (tmp_path / "started").exists() else None, alive=sweep)
    time.sleep(0.5)  # an evaluation or two logged
    sweep.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    _, stderr = sweep.communicate(timeout=60)
    assert sweep.returncode == 143, stderr[-2000:]
    assert time.monotonic() - sent < 30 and "stopped by SIGTERM; run the same command again to resume" in stderr

    study = SweepStorage.of_store(tmp_path / "mlruns").study("space-tpe")
    interrupted = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert interrupted and all(t.user_attrs["fail_reason"] == "interrupted" for t in interrupted)
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.WAITING]) == len(interrupted)  # queued again
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sweeplab-slow_fit.py:fit").experiment_id
    runs = client.search_runs([experiment])
    assert not [r for r in runs if r.info.status == "RUNNING"]
    (parent,) = [r for r in runs if r.data.tags["sweeplab.role"] == "sweep"]
    assert parent.info.status == "KILLED"
    stopped = [r for r in runs if r.data.tags["sweeplab.role"] == "trial"]
    assert stopped and all(r.info.status == "KILLED" and r.data.tags["sweeplab.fail_reason"] == "interrupted" for r in stopped)
    written = {r.info.run_id: len(client.get_metric_history(r.info.run_id, "val_loss")) for r in stopped}
    assert all(written.values())  # their points were written

    (tmp_path / "slow").unlink()
    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    study = SweepStorage.of_store(tmp_path / "mlruns").study("space-tpe")
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) == 2
    retries = [r for r in client.search_runs([experiment]) if r.data.tags.get("sweeplab.retry_of") in written]
    assert len(retries) == len(written)
    for retry in retries:  # each goes on from the step its interrupted attempt saved, and holds each step once
        saved = written[retry.data.tags["sweeplab.retry_of"]]
        assert retry.data.tags["sweeplab.resumed_from"] == str(saved)
        assert [m.step for m in client.get_metric_history(retry.info.run_id, "val_loss")] == list(range(1, 31))

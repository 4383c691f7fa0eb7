"""SIGTERM, SIGHUP and SIGUSR1 stop a sweep the way Ctrl-C does: the running trial closes as
interrupted with its points written, the parent run is closed, the command exits 128 + the
signal's number, and the same command resumes."""

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

from sweeplab.sweeps.signals import STOP_SIGNALS, Stopped, stop_on_signals
from tests.checks import wait_for
from tests.storages import SweepStorage

#: A trainer of 30 slow epochs while the file ``slow`` is beside it, of quick ones after.
TRAINER = textwrap.dedent('''\
    import pathlib, time

    def fit(config, report):
        here = pathlib.Path(__file__).parent
        for epoch in range(1, 31):
            if (here / "slow").exists():
                (here / "started").touch()
                time.sleep(0.2)
            report(epoch, {"val_loss": 1 / epoch, "val_accuracy": config["lr"] * epoch / 30})
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


def test_sigterm_stops_the_sweep_as_ctrl_c_does_and_the_same_command_resumes(tmp_path: Path) -> None:
    (tmp_path / "slow_fit.py").write_text(TRAINER, encoding="utf-8")
    (tmp_path / "space.toml").write_text("[search.lr]\nlow = 0.1\nhigh = 1.0\n", encoding="utf-8")
    (tmp_path / "slow").touch()
    command = [sys.executable, "-m", "sweeplab", "run", "slow_fit.py:fit", "--space", "space.toml", "--trials", "2",
               "--pruner", "none", "--no-plots"]
    env = {**os.environ, "COLUMNS": "200"}
    sweep = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for("a trial training", lambda: True if (tmp_path / "started").exists() else None, alive=sweep)
    time.sleep(0.5)  # an evaluation or two logged
    sweep.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    _, stderr = sweep.communicate(timeout=60)
    assert sweep.returncode == 143, stderr[-2000:]
    assert time.monotonic() - sent < 30 and "stopped by SIGTERM; run the same command again to resume" in stderr

    (trial,) = SweepStorage.of_store(tmp_path / "mlruns").study("space-tpe").trials
    assert trial.state == optuna.trial.TrialState.FAIL and trial.user_attrs["fail_reason"] == "interrupted"
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sweeplab-slow_fit.py:fit").experiment_id
    runs = {r.data.tags["sweeplab.role"]: r for r in client.search_runs([experiment])}
    assert runs["sweep"].info.status == "KILLED"
    assert runs["trial"].info.status == "KILLED" and runs["trial"].data.tags["sweeplab.fail_reason"] == "interrupted"
    assert client.get_metric_history(runs["trial"].info.run_id, "val_loss")  # its points were written

    (tmp_path / "slow").unlink()
    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    study = SweepStorage.of_store(tmp_path / "mlruns").study("space-tpe")
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) == 2

"""Kill a sweep with SIGKILL at random moments, rerun the same command each time, and check that
nothing was lost: the by-hand version of the resume tests, at a larger scale.

Each round starts ``sweep run sentiment --workers K`` (tiny random backbones on the packaged
sample), waits a random time, then sends SIGKILL either to the main process alone or to its whole
process group (main and workers at once). A last run completes the sweep. Then, from the stores
alone, it checks that:

- Optuna holds at least ``--trials`` finished trials, every trial finished or failed (none left
  RUNNING or WAITING), every failure a kill or interruption;
- MLflow has no run left RUNNING, one parent run, and a FINISHED child run for every finished
  trial, with the trial's state; no complete run was lost between rounds.

    python tools/kill_and_resume.py --rounds 6 --trials 16 --workers 2
    python tools/kill_and_resume.py --rounds 6 --trials 24 --workers 3 --sampler grid --epochs 30
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from mlflow import MlflowClient
from optuna.trial import TrialState

TINY = ["--set", "text_model=tiny", "--set", "image_model=tiny", "--set", "image_size=32", "--set", "max_length=32",
        "--set", "freeze_backbones=false"]


def _complete_runs(client: MlflowClient) -> set[str]:
    experiment = client.get_experiment_by_name("sweeplab-sentiment")
    if experiment is None:
        return set()
    runs = client.search_runs([experiment.experiment_id], "tags.`sweeplab.state` = 'complete'", max_results=10000)
    return {r.info.run_id for r in runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6, help="killed runs before the last one")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=60, help="epochs a trial (its length)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill times")
    parser.add_argument("--sampler", choices=("random", "grid"), default="random",
                        help="grid: the report's 24-cell sentiment grid, each cell checked to have run exactly once")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        command = [sys.executable, "-m", "sweeplab", "run", "sentiment", "--trials", str(args.trials), "--workers",
                   str(args.workers), "--sampler", args.sampler, "--pruner", "none", "--no-early-stop", "--no-plots",
                   "--store-dir", str(store), "--set", f"epochs={args.epochs}", *TINY]
        client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
        kept: set[str] = set()
        for round_ in range(args.rounds):
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            wait = rng.uniform(4, 25)
            time.sleep(wait)
            whole = rng.random() < 0.5
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL) if whole else process.kill()
            process.wait()
            time.sleep(2)  # let interrupted workers close their trials
            if (store / "mlflow.db").exists():
                now = _complete_runs(client)
                lost = kept - now
                print(f"round {round_}: SIGKILL to the {'process group' if whole else 'main process'} after {wait:.1f} s; "
                      f"{len(now)} complete runs, lost {len(lost)}", flush=True)
                assert not lost, f"complete runs lost: {lost}"
                kept = now
        final = subprocess.run(command, capture_output=True, text=True)
        print(f"last run: exit {final.returncode}")
        assert final.returncode == 0, final.stderr[-3000:]

        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(store / "optuna.journal")))
        study = optuna.load_study(study_name=f"sentiment-{args.sampler}", storage=storage)
        states = {s.name: sum(t.state == s for t in study.trials) for s in TrialState}
        print("optuna:", {k: v for k, v in states.items() if v})
        finished = states["COMPLETE"] + states["PRUNED"]
        assert finished >= args.trials and not states["RUNNING"] and not states["WAITING"]
        reasons = {t.user_attrs.get("fail_reason", "") for t in study.trials if t.state == TrialState.FAIL}
        assert all(r.startswith(("killed", "interrupted")) for r in reasons), reasons
        experiment = client.get_experiment_by_name("sweeplab-sentiment").experiment_id
        runs = client.search_runs([experiment], max_results=10000)
        parents = [r for r in runs if r.data.tags.get("sweeplab.role") == "sweep"]
        children = {int(r.data.tags["sweeplab.trial"]): r for r in runs if r.data.tags.get("sweeplab.role") == "trial"}
        statuses = sorted({r.info.status for r in runs})
        print(f"mlflow: {len(parents)} parent, {len(children)} child runs, statuses {statuses}")
        assert len(parents) == 1 and "RUNNING" not in statuses
        for trial in study.trials:
            if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
                run = children[trial.number]
                assert run.info.status == "FINISHED" and run.data.tags["sweeplab.state"] == trial.state.name.lower()
        assert kept <= _complete_runs(client)
        if args.sampler == "grid":
            cells = [tuple(sorted(t.params.items())) for t in study.trials if t.state == TrialState.COMPLETE]
            assert len(cells) == len(set(cells)) == min(args.trials, 24), "a grid cell ran twice or not at all"
            print(f"grid: {len(cells)} distinct cells complete, none twice")
        print("ok: nothing lost, nothing left running")


if __name__ == "__main__":
    main()

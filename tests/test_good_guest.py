"""A good guest in a notebook: after ``sweeplab.run`` returns or raises, the process is as it was
(the garbage collector, matplotlib's backend and pyplot's figures, library loggers' levels, the
environment, pooled database connections); so are the pieces that make it so (a block frozen out
of the collector's view, a closed storage); and what waits out an outage stops waiting at once
when the process is told to stop."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import pytest

from sweeplab.errors import Unreachable
from sweeplab.sweeps.storage import close_storage, reconnecting_rdb
from sweeplab.tracker import reconnect
from sweeplab.tracker.reconnect import Patience, stop_retrying
from sweeplab.trainers.device import frozen_long_lived

#: A notebook's session: its own plotting (a backend other than Agg, interactive mode, an open
#: figure), loggers and environment, then two sweeps of a function defined in the session, one
#: that finishes (pictures drawn) and one whose every trial fails (``run`` raises). It prints the
#: process's state before and after each, as JSON. A fresh interpreter, as a notebook is: in the
#: test process, earlier tests have imported the plotting modules and set loggers already.
NOTEBOOK = textwrap.dedent('''
    import gc, json, logging, os, sys
    import matplotlib
    matplotlib.use("svg")
    import matplotlib.pyplot as plt
    import mlflow, optuna, sklearn  # the session's own imports (sklearn sets KMP_* variables when imported)
    import sweeplab
    from sweeplab.errors import SweepFailed

    plt.ion()
    own_figure = plt.figure()
    logging.getLogger("mlflow").setLevel(logging.DEBUG)
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "7"  # the user's value, which sweeplab keeps
    frozen_in_trials = []

    def state():
        from sweeplab.tracker.sql_reader import held_engines

        return {
            "gc frozen": gc.get_freeze_count(),
            "backend": matplotlib.get_backend(),
            "interactive": matplotlib.is_interactive(),
            "pyplot figures": plt.get_fignums(),
            "current figure is its own": plt.gcf() is own_figure,
            "rcParams": {k: repr(v) for k, v in matplotlib.rcParams.items()},
            "logger levels": {n: l.level for n, l in logging.root.manager.loggerDict.items() if isinstance(l, logging.Logger)},
            "environment": dict(os.environ),
            "SQL reader engines": held_engines() if "sweeplab.tracker.sql_reader" in sys.modules else 0,
        }

    def fit(config, report):
        frozen_in_trials.append(gc.get_freeze_count())
        w = 0.0
        for epoch in range(1, 4):
            w += config["lr"] * (1 - w)
            report(epoch, {"train_loss": (1 - w) ** 2, "val_loss": (1 - w) ** 2 + 0.01 * epoch})

    def broken(config, report):
        raise ValueError("a bug in the trainer")

    before = state()
    outcome = sweeplab.run(fit, space="space.toml", trials=3, study="finishes")
    after_return = state()
    try:
        sweeplab.run(broken, space="space.toml", trials=2, study="fails")
        raised = None
    except SweepFailed as exc:
        raised = str(exc)
    after_raise = state()
    pictures = [a.path for a in mlflow.MlflowClient(outcome.tracking_uri).list_artifacts(outcome.parent_run_id, "sweep")]
    print(json.dumps({"before": before, "after return": after_return, "after raise": after_raise, "raised": raised,
                      "pictures": pictures, "frozen in trials": frozen_in_trials}))
''')

SPACE = "[search.lr]\nlow = 0.01\nhigh = 1.0\nlog = true\n"


@pytest.fixture(scope="module")
def notebook(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What :data:`NOTEBOOK` printed, run in a fresh interpreter in a folder of its own."""
    folder = tmp_path_factory.mktemp("notebook")
    (folder / "space.toml").write_text(SPACE, encoding="utf-8")
    done = subprocess.run([sys.executable, "-c", NOTEBOOK], cwd=folder, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_sweeps_ran_froze_the_collector_and_drew_their_pictures(notebook: dict[str, Any]) -> None:
    """What the other tests' "as it was" is measured against: the sweeps did change these."""
    assert notebook["raised"] is not None and "a bug in the trainer" in notebook["raised"]
    assert notebook["frozen in trials"] and all(count > 0 for count in notebook["frozen in trials"])
    assert sorted(notebook["pictures"]) == sorted(f"sweep/{name}.png" for name in (
        "optimisation_history", "param_importances", "parallel_coordinates", "curves_by_epoch", "onset_by_params"))


@pytest.mark.parametrize("moment", ["after return", "after raise"])
@pytest.mark.parametrize("what", ["gc frozen", "backend", "interactive", "pyplot figures", "current figure is its own",
                                  "rcParams", "SQL reader engines"])
def test_the_process_is_as_it_was(notebook: dict[str, Any], moment: str, what: str) -> None:
    assert notebook[moment][what] == notebook["before"][what]


@pytest.mark.parametrize("moment", ["after return", "after raise"])
def test_loggers_and_environment_are_as_they_were(notebook: dict[str, Any], moment: str) -> None:
    before, after = notebook["before"], notebook[moment]
    assert {name: after["logger levels"].get(name) for name in before["logger levels"]} == before["logger levels"]
    assert before["logger levels"]["mlflow"] == 10  # the session's DEBUG, kept
    assert after["environment"] == before["environment"]
    assert after["environment"]["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "7"


def test_a_stop_ends_the_wait_between_tries_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker told to stop while a storage call waits out an outage gives up now, not after
    the backoff (here 60 s)."""
    monkeypatch.setattr(reconnect, "_stopping", threading.Event())  # the process-wide flag, for this test only
    tried = threading.Event()

    def refused() -> None:
        tried.set()
        raise ConnectionRefusedError(111, "Connection refused")

    outcome: list[BaseException] = []

    def call() -> None:
        try:
            Patience("the test store", limit=600, first=60).call(refused)
        except BaseException as exc:
            outcome.append(exc)

    waiting = threading.Thread(target=call, daemon=True)
    waiting.start()
    assert tried.wait(10)
    started = time.monotonic()
    stop_retrying()
    waiting.join(10)
    assert not waiting.is_alive() and time.monotonic() - started < 5
    assert len(outcome) == 1 and isinstance(outcome[0], Unreachable)


def test_closing_an_rdb_storage_gives_back_its_pooled_connections(tmp_path: Path) -> None:
    rdb = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    storage = reconnecting_rdb(rdb, Patience("the test store"))
    optuna.create_study(storage=storage).optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert rdb.engine.pool.checkedin() > 0
    close_storage(storage)
    assert rdb.engine.pool.checkedin() == 0
    assert len(optuna.load_study(study_name=None, storage=storage).trials) == 1  # usable still: it connects again


def test_what_a_sweep_froze_is_back_in_the_collectors_view_however_the_block_ends() -> None:
    gc.unfreeze()  # what earlier tests' sweeps froze for good (the old way) goes back, as it should have
    with pytest.raises(RuntimeError), frozen_long_lived():
        frozen = gc.get_freeze_count()
        raise RuntimeError("a trial's error")
    assert frozen > 0 and gc.get_freeze_count() == 0


def test_objects_the_process_froze_itself_are_left_frozen_and_nothing_is_added() -> None:
    """The count may only fall by the few frozen objects that other threads of this busy test
    process free meanwhile (a frozen object that dies leaves the permanent generation); an
    unfreeze would take it to 0, and anything frozen by the block would raise it."""
    gc.freeze()
    try:
        own = gc.get_freeze_count()
        with frozen_long_lived():
            assert own - 100 <= gc.get_freeze_count() <= own
        assert own - 100 <= gc.get_freeze_count() <= own
    finally:
        gc.unfreeze()

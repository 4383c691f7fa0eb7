"""The driver's study opening: one process creates a study, and only it makes the parent run."""

from __future__ import annotations

import threading
import time

import optuna

from sweeplab.sweeps.driver import PARENT_RUN, _open_study, _recorded_parent


def test_of_two_processes_opening_one_study_exactly_one_is_its_creator() -> None:
    storage = optuna.storages.InMemoryStorage()
    args = (optuna.samplers.RandomSampler(), optuna.pruners.NopPruner(), "maximize")
    first, created_first = _open_study(storage, "s", *args)
    second, created_second = _open_study(storage, "s", *args)
    assert (created_first, created_second) == (True, False)
    assert first._study_id == second._study_id and second.direction == optuna.study.StudyDirection.MAXIMIZE


def test_a_joining_process_waits_for_the_creator_to_record_the_parent_run() -> None:
    storage = optuna.storages.InMemoryStorage()
    study, _ = _open_study(storage, "s", optuna.samplers.RandomSampler(), optuna.pruners.NopPruner(), "minimize")
    assert _recorded_parent(study, 0.2) is None  # never recorded: the caller finds or makes the run itself
    threading.Timer(0.5, lambda: study.set_user_attr(PARENT_RUN, "run-of-the-creator")).start()
    start = time.monotonic()
    assert _recorded_parent(study, 30) == "run-of-the-creator"
    assert time.monotonic() - start < 10

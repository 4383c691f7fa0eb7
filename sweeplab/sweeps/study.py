"""A sweep's identity and its resumption: the Optuna study and the MLflow parent run, made once
and found again by name.

The study is named by ``--study`` (default ``SPACE-SAMPLER``), so the same command run again
resumes it; a study made with other settings (task, data, split, seed, space) is refused rather
than mixed. Exactly one process creates a study name (the storage lets only one), and that
process alone makes the sweep's parent run; a process that joins waits for the creator to record
it. A resumed sweep keeps the pruner it was started with.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import optuna

from sweeplab.core import Task
from sweeplab.errors import UsageError
from sweeplab.sweeps import optuna_private
from sweeplab.sweeps.checks import Checked
from sweeplab.sweeps.options import SweepOptions
from sweeplab.sweeps.processes import process_ended, worker_attrs
from sweeplab.sweeps.pruners import make_pruner, pruner_name
from sweeplab.sweeps.recovery import KilledTrials
from sweeplab.sweeps.resume_states import resume_store
from sweeplab.sweeps.samplers import make_sampler, sampler_name, sampler_seed
from sweeplab.sweeps.space import Space
from sweeplab.sweeps.storage import close_storage, open_optuna_storage
from sweeplab.tasks import spec_name
from sweeplab.trainers.command import command_of_spec
from sweeplab.tracker.embedded import ensure_tracking_db
from sweeplab.tracker.provenance import provenance_tags
from sweeplab.tracker.runs import SweepRecorder
from sweeplab.tracker.tags import DIRECTION, METRIC, SPEC, TARGET

__all__ = ["CREATOR", "PARENT_RUN", "PRUNER", "Opened", "open_study", "open_sweep", "recorded_parent", "study_name"]

PARENT_RUN = "sweeplab.parent_run_id"  # study user attribute: the sweep's MLflow parent run
PRUNER = "sweeplab.pruner"  # study user attribute: the pruner the sweep runs with
CREATOR = "sweeplab.creator"  # study user attribute: the process that created the study (processes.worker_attrs)

#: How long a process that found the study made waits for its creator to record the parent run.
PARENT_WAIT_SECONDS = 60.0


def study_name(options: SweepOptions, space: Space) -> str:
    """``--study``, or ``SPACE-SAMPLER``."""
    return options.search.study or f"{space.name}-{sampler_name(options)}"


def settings_of(task: Task, space: Space, options: SweepOptions, data_dir: Path | None) -> dict[str, str]:
    """What makes trials of one study comparable: a resumed study must have been made with the
    same task, data, split, seed and space (searched ranges and fixed values)."""
    return {
        "task": task.name,
        "data_dir": str(Path(data_dir).resolve()) if data_dir is not None else "",
        "seed": str(options.search.seed),
        "split_seed": str(options.search.split_seed),
        "val_fraction": str(options.search.val_fraction),
        "metric": f"{task.metric} ({task.direction})",
        "search": repr(sorted((k, v.signature()) for k, v in space.params.items())),
        "fixed": repr(sorted((k, repr(v)) for k, v in space.fixed.items())),
    }


def check_same_settings(study: optuna.Study, settings: Mapping[str, str]) -> None:
    """Record the settings on a new study; refuse to resume one made with other settings."""
    previous = study.user_attrs.get("sweeplab.settings")
    if previous is None:
        study.set_user_attr("sweeplab.settings", dict(settings))
        return
    differ = [key for key in settings if previous.get(key, settings[key]) != settings[key]]  # absent: made before the key
    if differ:
        raise UsageError(
            f"study {study.study_name!r} was made with other settings ({', '.join(differ)} "
            f"{'differs' if len(differ) == 1 else 'differ'}); "
            "pass --study NAME to start a new sweep, or repeat the original command to resume it"
        )


def open_study(storage: optuna.storages.BaseStorage, name: str, pruner: optuna.pruners.BasePruner,
                direction: str) -> tuple[optuna.Study, bool]:
    """Create the study, or load it when an earlier run or another machine made it; also says
    whether this process created it. The storage lets exactly one process create a study name, and
    that process alone makes the sweep's parent run: machines started at the same moment would
    otherwise each make one."""
    try:
        study_id = storage.create_new_study([optuna.study.StudyDirection[direction.upper()]], name)
        storage.set_study_user_attr(study_id, CREATOR, worker_attrs())  # who to wait for (see recorded_parent)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        created = False
    return optuna.load_study(study_name=name, storage=storage, pruner=pruner), created


def recorded_parent(study: optuna.Study, seconds: float) -> str | None:
    """The parent run the study records, waiting up to ``seconds`` for the process that created
    the study (started at the same moment, on another machine) to record it; None if it never does
    (it was killed first), and then the parent run is found by its tags or made. A creator that
    ran on this machine and has ended (a first start killed early) is not waited for."""
    deadline = time.monotonic() + seconds
    while True:
        attrs = study.user_attrs
        run_id = attrs.get(PARENT_RUN)
        if run_id or time.monotonic() >= deadline or process_ended(attrs.get(CREATOR)):
            return run_id
        time.sleep(0.5)


@dataclass(frozen=True)
class Opened:
    """A sweep's study and parent run, made or found again; ``options`` carries the pruner the
    study runs with."""

    options: SweepOptions
    study: optuna.Study
    name: str
    killed: KilledTrials
    recorder: SweepRecorder
    experiment: str


def open_sweep(checked: Checked) -> Opened:
    """Create or resume the study (refusing one made with other settings) and its parent run."""
    options, store = checked.options, checked.store
    name = study_name(options, checked.space)
    killed = KilledTrials(options.tracking.heartbeat, options.runtime.max_retries)
    storage = open_optuna_storage(store.optuna_storage, options.tracking.heartbeat, killed, options.tracking.outage_limit)
    try:
        return _opened(checked, storage, name, killed)
    except BaseException:  # a refused resume, a parent run out of reach: the storage's connections go back
        close_storage(storage)
        raise


def _opened(checked: Checked, storage: optuna.storages.BaseStorage, name: str, killed: KilledTrials) -> Opened:
    """:func:`open_sweep` on the opened ``storage``: the study, its sampler and pruner, its parent run."""
    options, task, space = checked.options, checked.task, checked.space
    study, created = open_study(storage, name, optuna.pruners.NopPruner(), task.direction)
    check_same_settings(study, settings_of(task, space, options, checked.data_dir))  # a refused resume changes nothing
    # A resumed sweep's pruner is on its study; one made before sweeplab recorded it ran with
    # the median pruner, the default then.
    recorded = study.user_attrs.get(PRUNER) or (None if created or not study.get_trials(deepcopy=False) else "median")
    pruner = pruner_name(options, recorded)
    if isinstance(options.search.pruner, (str, type(None))):
        options = options.with_(pruner=pruner)
    sampler = make_sampler(options, space, sampler_seed(options.search.seed, created, len(study.get_trials(deepcopy=False))))
    study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=make_pruner(options, space, task))
    if study.user_attrs.get(PRUNER) != pruner:
        study.set_user_attr(PRUNER, pruner)
    recorder = _open_parent_run(checked, options, study, name, pruner, created)
    killed.recorder = recorder
    killed.forget = lambda study, first: resume_store(checked, recorder, study.study_name, optuna_private.study_id(study),
                                                      first).delete()
    return Opened(options, study, name, killed, recorder, options.tracking.experiment or f"sweeplab-{task.name}")


def _open_parent_run(checked: Checked, options: SweepOptions, study: optuna.Study, name: str, pruner: str,
                     created: bool) -> SweepRecorder:
    """The sweep's parent run: made by the process that created the study, found again by the
    others and by a rerun (recorded on the study, else by its tags)."""
    task, store, space = checked.task, checked.store, checked.space
    sweep_params = {"task": task.name, "space": str(space.path), "sampler": sampler_name(options), "pruner": pruner,
                    "seed": options.search.seed, "split_seed": options.search.split_seed, "data_dir": str(checked.data_dir or ""),
                    "trials": options.search.trials, "device": str(checked.device), "precision": options.runtime.precision,
                    "compile": options.runtime.compile, **checked.rule.as_params()}
    base_tags = {"sweeplab.task": task.name, "sweeplab.study": name, METRIC: task.metric, DIRECTION: task.direction,
                 TARGET: str(options.search.trials), **provenance_tags()}
    if ":" in options.task and command_of_spec(options.task) is None:  # a trainer named by its file or module: the read commands find its runs by that name
        base_tags[SPEC] = spec_name(options.task)
    if store.is_default:  # built under a temporary name and moved into place: a kill leaves no half-made store
        ensure_tracking_db(store.root / "mlflow.db", store.artifact_root)
    known_parent = study.user_attrs.get(PARENT_RUN) or (None if created else recorded_parent(study, PARENT_WAIT_SECONDS))
    recorder = SweepRecorder.open(store.tracking_uri, options.tracking.experiment or f"sweeplab-{task.name}",
                                  store.artifact_root, name, base_tags, sweep_params, known_run_id=known_parent,
                                  outage_limit=options.tracking.outage_limit)
    if study.user_attrs.get(PARENT_RUN) != recorder.parent_run_id:
        study.set_user_attr(PARENT_RUN, recorder.parent_run_id)  # later workers join this run
    return recorder

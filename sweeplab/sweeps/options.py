"""What ``sweep run`` accepts, split by concern into small validated config objects.

* :class:`Search` -- what is searched and how a trial is judged: trials, space, sampler, pruner,
  seeds, metric, the overfitting rule, the data and its validation split.
* :class:`Tracking` -- where the records go: the store, the tracking server, the Optuna storage,
  the cache, what is logged, how long a store may be away.
* :class:`Runtime` -- where and how trials run: device, precision, worker processes, GPUs, a Ray cluster.

Each checks its own values when it is made (a one-line :class:`~sweeplab.errors.UsageError`
naming the flag), so a bad command fails before anything is read or written.
:class:`SweepOptions` holds the three with the task; :meth:`SweepOptions.of` takes the flags
flat, as the command line and :func:`sweeplab.run` do.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from sweeplab.errors import UsageError

__all__ = ["CHECKPOINTS", "PRECISIONS", "PRUNERS", "SAMPLERS", "Runtime", "Search", "SweepOptions", "Tracking"]

SAMPLERS = ("tpe", "grid", "random")
PRUNERS = ("median", "hyperband", "asha", "none")
CHECKPOINTS = ("best", "all", "none")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def _one_of(flag: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UsageError(f"{flag} {value}: expected one of {', '.join(allowed)}")


@dataclass(frozen=True)
class Search:
    """What is searched and how a trial is judged."""

    trials: int = 6  # finished trials the study should hold (a total across processes)
    timeout: float | None = None  # seconds the sweep may run: no trial starts after, running ones stop at their next evaluation
    space: str | None = None  # a space file or a built-in space's name; None: the task's
    sampler: Any = "tpe"  # a name of SAMPLERS, or an Optuna sampler object (from Python)
    pruner: Any = None  # a name of PRUNERS, or an Optuna pruner object; None: the study's own (see pruners.pruner_name)
    seed: int = 0
    split_seed: int | None = None  # seeds the validation split; None: ``seed`` (compare samplers on one split)
    study: str | None = None  # None: SPACE-SAMPLER
    metric: str | None = None  # None: the task's
    overrides: Mapping[str, Any] = field(default_factory=dict)  # --set NAME=VALUE
    early_stop: bool = True
    onset_s: int | None = 3
    onset_alpha: float | None = 5.0
    val_fraction: float = 0.2
    data_dir: Path | None = None  # None: the task's packaged sample
    allow_bad_rows: bool = False  # go on when a file's last line is cut short or it loses > 1% of its rows (core.data_report)

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise UsageError(f"--trials {self.trials}: expected a positive number of trials")
        if self.timeout is not None and not self.timeout > 0:
            raise UsageError(f"--timeout {self.timeout:g}: expected a positive number of seconds")
        if isinstance(self.sampler, str):
            _one_of("--sampler", self.sampler, SAMPLERS)
        if isinstance(self.pruner, str):
            _one_of("--pruner", self.pruner, PRUNERS)
        if not 0 < self.val_fraction < 1:
            raise UsageError(f"--val-fraction {self.val_fraction}: expected a number between 0 and 1")
        if self.onset_s is not None and self.onset_s < 1:
            raise UsageError(f"--onset-s {self.onset_s}: expected at least 1 successive rise")
        if self.onset_alpha is not None and not self.onset_alpha > 0:
            raise UsageError(f"--onset-alpha {self.onset_alpha}: expected a threshold above 0 (percent)")


@dataclass(frozen=True)
class Tracking:
    """Where the sweep's records go, and how long they may be away."""

    store_dir: Path = Path("mlruns")
    tracking_uri: str | None = None  # None: MLFLOW_TRACKING_URI, else the embedded store
    storage: str | None = None  # Optuna storage; None: the journal file beside the store
    cache_dir: Path | None = None  # None: STORE_DIR/cache
    experiment: str | None = None  # None: sweeplab-TASK
    checkpoints: str = "best"
    plots: bool = True
    flush_seconds: float = 1.0  # how often a trial's buffered curve points are written
    heartbeat: int = 60  # seconds between a running trial's heartbeats (see sweeps.recovery)
    outage_limit: float = 300.0  # seconds a database or tracking server may be away before the sweep stops
    served_artifacts: str | None = None  # a worker on a Ray node: the head's artifact folder its tracking server serves

    def __post_init__(self) -> None:
        _one_of("--checkpoints", self.checkpoints, CHECKPOINTS)
        if self.heartbeat < 1:
            raise UsageError(f"--heartbeat {self.heartbeat}: expected at least 1 second")
        if not self.outage_limit >= 0:
            raise UsageError(f"--outage-limit {self.outage_limit:g}: expected seconds >= 0")


@dataclass(frozen=True)
class Runtime:
    """Where and how the trials run."""

    device: str = "auto"
    precision: str = "auto"
    workers: int = 1  # processes on this machine sharing the study; with ray, at most at once (0: what the cluster holds)
    gpus: tuple[str, ...] = ()  # handed to the workers in turn (CUDA_VISIBLE_DEVICES); repeated: workers share a card
    gpus_per_trial: int = 1  # cards each trial gets: --gpus taken G at a time (a multi-GPU command, torchrun)
    compile: bool = False  # torch.compile each trial's model (its compile time counted in the trial)
    max_retries: int = 3  # times a killed, preempted or interrupted trial is run again, from its resume state
    checkpoint_minutes: float = 10.0  # minutes of training between a trial's resume-state saves
    ray: str | None = None  # a Ray cluster's address, "auto" or "local": the trials run on its nodes (sweeps.ray_workers)
    trial_resources: str | None = None  # with ray: what each trial asks of the cluster, "cpu=1,gpu=0.5" (default cpu=1)

    def __post_init__(self) -> None:
        _one_of("--precision", self.precision, PRECISIONS)
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise UsageError(f"--max-retries {self.max_retries}: expected a whole number >= 0 (0: never run a killed trial again)")
        if not (isinstance(self.checkpoint_minutes, (int, float)) and math.isfinite(self.checkpoint_minutes)
                and self.checkpoint_minutes > 0):
            minutes = self.checkpoint_minutes
            given = f"{minutes:g}" if isinstance(minutes, (int, float)) else repr(minutes)
            raise UsageError(f"--checkpoint-minutes {given}: expected a number of minutes > 0 "
                             "(fractions allowed, such as 0.5)")
        if self.workers < (0 if self.ray else 1):
            raise UsageError(f"--workers {self.workers}: expected at least 1 worker process")
        if any(not gpu for gpu in self.gpus):
            raise UsageError(f"--gpus {','.join(self.gpus)}: expected GPU numbers separated by commas, such as 0 or 0,0,1,1")
        per = self.gpus_per_trial
        if isinstance(per, bool) or not isinstance(per, int) or per < 1:
            raise UsageError(f"--gpus-per-trial {per}: expected a whole number of cards >= 1")
        if per > 1 and not self.gpus:
            raise UsageError(f"--gpus-per-trial {per}: name the cards the trials share with --gpus, such as --gpus 0,1,2,3")
        if len(self.gpus) % per:
            raise UsageError(f"--gpus-per-trial {per}: the {len(self.gpus)} cards of --gpus {','.join(self.gpus)} "
                             f"do not make whole trials of {per}")
        repeated = next((group for group in self.cards if len(set(group.split(","))) < per), None)
        if per > 1 and repeated is not None:
            raise UsageError(f"--gpus-per-trial {per}: a trial would get cards {repeated}, one card twice; name each "
                             "of a trial's cards once (several trials on one card: --workers K --gpus 0)")
        self._check_ray()

    def _check_ray(self) -> None:
        """``--ray`` and ``--trial-resources``: the values alone (the cluster's resources are
        checked once it is reached, :func:`sweeplab.sweeps.ray_workers.on_cluster`)."""
        host, sep, port = (self.ray or "").split("://")[-1].rpartition(":")
        if self.ray is not None and self.ray not in ("auto", "local") and not (sep and host and port.isdigit()):
            raise UsageError(f"--ray {self.ray}: expected a Ray cluster's HOST:PORT (or ray://HOST:PORT), auto or local")
        if self.trial_resources is not None and self.ray is None:
            raise UsageError(f"--trial-resources {self.trial_resources}: only with --ray (what each trial asks of the "
                             "Ray cluster)")
        if self.ray is not None and self.gpus:
            raise UsageError(f"--gpus {','.join(self.gpus)} with --ray: Ray gives each trial its cards; ask for them with "
                             "--trial-resources gpu=1 (gpu=0.5: two trials share a card)")
        _resources(self.trial_resources)  # a malformed value is refused before anything runs

    @property
    def resources(self) -> dict[str, float]:
        """What each trial asks of the Ray cluster, from ``--trial-resources`` (``cpu=2,gpu=0.5``,
        custom resources by their name): ``cpu`` 1 unless given."""
        return _resources(self.trial_resources)

    @property
    def cards(self) -> tuple[str, ...]:
        """What each worker is given in turn: ``--gpus`` taken ``gpus_per_trial`` at a time
        (``0,1,2,3`` by 2: ``("0,1", "2,3")``), each a ``CUDA_VISIBLE_DEVICES`` value."""
        per = self.gpus_per_trial
        return tuple(",".join(self.gpus[i:i + per]) for i in range(0, len(self.gpus), per))


def _resources(given: str | None) -> dict[str, float]:
    """``--trial-resources`` as names and amounts (see :attr:`Runtime.resources`)."""
    wanted: dict[str, float] = {"cpu": 1.0}
    named: set[str] = set()
    for item in given.split(",") if given is not None else ():
        name, sep, amount = (part.strip() for part in item.partition("="))
        try:
            value = float(amount) if sep and name else math.nan
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise UsageError(f"--trial-resources {given}: expected NAME=AMOUNT pairs separated by commas, each "
                             "amount > 0, such as cpu=2,gpu=0.5")
        if name in named:
            raise UsageError(f"--trial-resources {given}: {name} is given twice")
        if name == "gpu" and value > 1 and not value.is_integer():
            raise UsageError(f"--trial-resources gpu={value:g}: expected a share of one card (such as 0.5) or whole cards")
        named.add(name)
        wanted[name] = value
    return wanted


_GROUPS = {"search": Search, "tracking": Tracking, "runtime": Runtime}
#: flat option name -> the group that holds it
_HOME = {f.name: group for group, kind in _GROUPS.items() for f in fields(kind)}


@dataclass(frozen=True)
class SweepOptions:
    """A sweep as ``sweep run`` describes it: the task and its options by concern. ``deadline``
    (the ``--timeout`` moment as ``time.time()``, handed by the main process to its workers) and
    ``role`` (``"worker"`` in a ``--workers`` process: no recovery, no final summary) are set by
    sweeplab itself."""

    task: str
    search: Search = field(default_factory=Search)
    tracking: Tracking = field(default_factory=Tracking)
    runtime: Runtime = field(default_factory=Runtime)
    deadline: float | None = None
    role: str = "main"

    def __post_init__(self) -> None:
        given = [kind for kind, value in (("sampler", self.search.sampler), ("pruner", self.search.pruner))
                 if value is not None and not isinstance(value, str)]
        if given and (self.runtime.workers > 1 or self.runtime.gpus or self.runtime.ray):
            flag = "--ray" if self.runtime.ray else f"--workers {self.runtime.workers}"
            raise UsageError(f"{flag}: a {' and '.join(given)} given as an object cannot be "
                             f"handed to worker processes; name one ({', '.join(SAMPLERS)}; {', '.join(PRUNERS)})")

    @classmethod
    def of(cls, task: str, **options: Any) -> SweepOptions:
        """Options from flat names (``trials=8, store_dir=..., workers=2``), as the command line
        has them; an unknown name is a :class:`TypeError`."""
        return cls(task).with_(**options)

    def with_(self, **options: Any) -> SweepOptions:
        """A copy with the named options changed (flat names, see :meth:`of`)."""
        changes: dict[str, dict[str, Any]] = {}
        top = {}
        for name, value in options.items():
            if name in ("deadline", "role"):
                top[name] = value
            elif name in _HOME:
                changes.setdefault(_HOME[name], {})[name] = value
            else:
                raise TypeError(f"unknown sweep option {name!r}")
        groups = {group: replace(getattr(self, group), **values) for group, values in changes.items()}
        return replace(self, **groups, **top)

    def as_json(self) -> dict[str, Any]:
        """Plain JSON values (paths as strings, overrides as a dict), for a worker's options file."""
        data = asdict(self)
        for group in _GROUPS:
            data[group] = {k: str(v) if isinstance(v, Path) else v for k, v in data[group].items()}
        data["search"]["overrides"] = dict(self.search.overrides)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SweepOptions:
        """The options :meth:`as_json` wrote."""
        groups = {}
        for group, kind in _GROUPS.items():
            values = dict(data[group])
            for f in fields(kind):
                if f.name.endswith("_dir") and values.get(f.name) is not None:
                    values[f.name] = Path(values[f.name])
            if "gpus" in values:
                values["gpus"] = tuple(values["gpus"])
            groups[group] = kind(**values)
        return cls(task=data["task"], deadline=data.get("deadline"), role=data.get("role", "main"), **groups)

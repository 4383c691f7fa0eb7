"""The pruners a sweep can name (``--pruner``), one factory each, or an Optuna pruner object
given from Python.

Every pruner hears a trial's evaluation index (1, 2, ...; see :mod:`sweeplab.sweeps.reporter`),
not the curve's step, so a rung or a warm-up counts evaluations for every task:

* ``median``: a trial is "far behind" when its metric is below the median of earlier trials at
  the same evaluation, judged after 3 finished trials and from the 3rd evaluation on.
* ``asha``: asynchronous successive halving (Li et al. 2020): at rungs of 1, 3, 9...
  evaluations a trial goes on only if it is in the best third of the trials that reached the
  rung.
* ``hyperband`` (Li et al. 2018): several successive-halving brackets, from aggressive (first
  rung at 1 evaluation) to none, between 1 evaluation and the most a trial of the space can make
  (:func:`most_evaluations`; found by Optuna from the first finished trial when the task cannot
  tell it from the config).
* ``none``: no trial is stopped early.

Every pruner judges each trial once, however many attempts it took: an attempt whose process died
and that a retry replaced is left out of the trials the pruner sees (:class:`RetryAwarePruner`),
or its rung values would count twice in successive halving and Hyperband's brackets.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import optuna

from sweeplab.core import Task
from sweeplab.errors import UsageError
from sweeplab.sweeps import optuna_private
from sweeplab.sweeps.options import SweepOptions
from sweeplab.sweeps.outcomes import retried_numbers
from sweeplab.sweeps.space import Param, Space

__all__ = ["PRUNERS", "RetryAwarePruner", "make_pruner", "most_evaluations", "pruner_name", "prunes"]

Factory = Callable[[Space, Task], optuna.pruners.BasePruner]


def _largest(param: Param) -> Any:
    """The value of ``param`` that makes a trial longest when it is a number (its largest),
    else its first choice."""
    numbers = [v for v in (param.high, *param.choices, *param.grid)
               if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return max(numbers) if numbers else (param.choices or param.grid or (None,))[0]


def most_evaluations(space: Space, task: Task) -> int | None:
    """The most evaluations a trial of ``space`` can make, as the task counts them
    (:attr:`~sweeplab.core.Task.evaluations`) for the config with every searched number at its
    largest; ``None`` when the task cannot tell it from a config."""
    config: Mapping[str, Any] = {**task.defaults, **space.fixed,
                                 **{name: _largest(param) for name, param in space.params.items()}}
    return task.evaluations(config)


def _hyperband(space: Space, task: Task) -> optuna.pruners.BasePruner:
    most = most_evaluations(space, task)
    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=most if most and most > 1 else "auto",
                                          reduction_factor=3)


#: ``--pruner`` name -> its factory; :data:`sweeplab.sweeps.options.PRUNERS` lists the same names.
PRUNERS: dict[str, Factory] = {
    "median": lambda space, task: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=3),
    "asha": lambda space, task: optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
    "hyperband": _hyperband,
    "none": lambda space, task: optuna.pruners.NopPruner(),
}


def _latest_attempts(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """``trials`` less the attempts that a retry replaced (:func:`~sweeplab.sweeps.outcomes.retried_numbers`),
    each retry under its first attempt's number (:func:`_as_first_attempt`)."""
    retried = retried_numbers(trials)
    return [_as_first_attempt(t) for t in trials if t.number not in retried]


def _as_first_attempt(trial: optuna.trial.FrozenTrial) -> optuna.trial.FrozenTrial:
    """``trial``, or for a retry a copy under its first attempt's number (Optuna's retry
    convention, ``system_attrs["failed_trial"]``): Hyperband picks a trial's bracket from its
    number, and a retry goes on in its first attempt's bracket, at the rungs it reached there."""
    first = trial.system_attrs.get("failed_trial")
    if first is None or first == trial.number:
        return trial
    twin = copy.copy(trial)
    twin.number = int(first)
    return twin


class RetryAwarePruner(optuna.pruners.BasePruner):
    """``wrapped``, shown the study as one trial per configuration: without the attempts that a
    retry replaced, and each retry under its first attempt's number. Optuna's successive halving
    (and so Hyperband) ranks a trial among the rung values of every trial of the study, failed
    ones included; a retry inherits its killed attempt's values, so the two would count as two
    trials at each rung they share, and Hyperband would put the retry in another bracket."""

    def __init__(self, wrapped: optuna.pruners.BasePruner) -> None:
        self.wrapped = wrapped

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return self.wrapped.prune(optuna_private.filtered_study(study, _latest_attempts), _as_first_attempt(trial))


def pruner_name(options: SweepOptions, recorded: str | None) -> str:
    """The pruner of a sweep: the one ``--pruner`` names (the class of an object given from
    Python); else the one the study was started with (a resumed sweep keeps its rules); else
    ``none`` for a grid, whose cells each run their full epochs as the report's did, and
    ``hyperband`` for sampled searches: with TPE it matched the median pruner's best in fewer
    epochs (``benchmarks/search_efficiency.py``)."""
    pruner = options.search.pruner
    if pruner is not None and not isinstance(pruner, str):
        return type(pruner).__name__
    name = pruner or recorded or ("none" if options.search.sampler == "grid" else "hyperband")
    if name not in PRUNERS:  # a resumed study that ran with a pruner object given from Python
        raise UsageError(f"this sweep ran with the pruner {name}, given from Python: pass it again to resume "
                         f"(or one of {', '.join(PRUNERS)})")
    return name


def make_pruner(options: SweepOptions, space: Space, task: Task) -> optuna.pruners.BasePruner:
    """The pruner of ``options`` (whose ``pruner`` is resolved, see :func:`pruner_name`), seeing
    each trial once (:class:`RetryAwarePruner`)."""
    pruner = options.search.pruner
    if isinstance(pruner, RetryAwarePruner):
        return pruner
    return RetryAwarePruner(pruner if isinstance(pruner, optuna.pruners.BasePruner) else PRUNERS[pruner](space, task))


def prunes(options: SweepOptions) -> bool:
    """Whether the sweep's pruner can stop a trial (not ``none``)."""
    pruner = options.search.pruner
    return not (pruner == "none" or isinstance(pruner, optuna.pruners.NopPruner))

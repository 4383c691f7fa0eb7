"""The samplers a sweep can name (``--sampler``), one factory each, or an Optuna sampler object
given from Python (``sweeplab.run(..., sampler=optuna.samplers.CmaEsSampler())``).

Every factory takes the sweep's options, its space and the seed (:func:`sampler_seed`) and
gives a fresh sampler; a grid is a queue of its cells (see :mod:`sweeplab.sweeps.grid_cells`)
walked with a random sampler that never samples, since Optuna's GridSampler repeats cells under
parallel workers and fails on re-queued ones.
"""

from __future__ import annotations

import hashlib
import os
import socket
import warnings
from collections.abc import Callable

import optuna

from sweeplab.sweeps.options import SweepOptions
from sweeplab.sweeps.space import Space

__all__ = ["SAMPLERS", "make_sampler", "sampler_name", "sampler_seed"]

Factory = Callable[[SweepOptions, Space, int], optuna.samplers.BaseSampler]


def _grid(options: SweepOptions, space: Space, seed: int) -> optuna.samplers.BaseSampler:
    space.grid_cells()  # a continuous range without grid values: a one-line error, before the store is touched
    return optuna.samplers.RandomSampler(seed=seed)


def _random(options: SweepOptions, space: Space, seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed)


def _tpe(options: SweepOptions, space: Space, seed: int) -> optuna.samplers.BaseSampler:
    """TPE, after ``min(10, max(2, trials // 4))`` random start-up trials. A space with
    parameters of one model family only is searched with the multivariate, grouped TPE: it
    models each family's parameters jointly, from the trials where they were sampled."""
    with warnings.catch_warnings():  # multivariate and group are "experimental" in Optuna 5, and well used
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, options.search.trials // 4)),
                                          multivariate=space.conditional, group=space.conditional)


#: ``--sampler`` name -> its factory; :data:`sweeplab.sweeps.options.SAMPLERS` lists the same names.
SAMPLERS: dict[str, Factory] = {"tpe": _tpe, "grid": _grid, "random": _random}


def sampler_name(options: SweepOptions) -> str:
    """The sampler's name as the sweep records it: the ``--sampler`` name, or the class of an
    Optuna sampler given from Python."""
    sampler = options.search.sampler
    return sampler if isinstance(sampler, str) else type(sampler).__name__


def make_sampler(options: SweepOptions, space: Space, seed: int) -> optuna.samplers.BaseSampler:
    """The sampler ``options`` names, seeded with ``seed``; an Optuna sampler object as given."""
    sampler = options.search.sampler
    if isinstance(sampler, optuna.samplers.BaseSampler):
        return sampler
    return SAMPLERS[sampler](options, space, seed)


def sampler_seed(seed: int, created: bool, trials: int) -> int:
    """The seed of this process's sampler: ``--seed`` itself in the process that creates the
    study, so that one process started from scratch proposes the same configurations every time.
    A process that joins the study (started with the same command at the same moment, on this
    machine or another, a ``--workers`` worker, or a rerun) mixes in its host name, its pid and
    the number of trials the study holds, so that it does not propose the configurations the
    first process proposed (a wasted trial each)."""
    if created:
        return seed
    mixed = hashlib.sha256(f"{seed}:{socket.gethostname()}:{os.getpid()}:{trials}".encode()).digest()
    return int.from_bytes(mixed[:4], "little")

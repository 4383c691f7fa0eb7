"""What ``sweep run`` refuses before it imports the task: a built-in task's trainer imports torch
and transformers, seconds before anything can be said, so what needs no task is said first (the
same words :func:`~sweeplab.sweeps.checks.check` would use after the import).

:func:`check_early` asks the stores (an unwritable ``--store-dir``, a server that does not
answer or asks for a login), the space file (found, valid TOML, its ranges and values), the data
folder's existence and, for a built-in
task, whether ``--metric`` names a validation metric it reports (its settings' ``METRICS``). Nothing here imports torch.
"""

from __future__ import annotations

import difflib
import importlib
from pathlib import Path

from sweeplab.errors import UsageError
from sweeplab.sweeps.options import SweepOptions
from sweeplab.sweeps.space import load_space
from sweeplab.tasks import REGISTRY, SETTINGS
from sweeplab.tracker.preflight import check_store
from sweeplab.tracker.store import resolve_store

__all__ = ["check_early", "check_metric"]


def check_metric(metric: str, open_task: bool) -> None:
    """Refuse a ``--metric`` that is no validation metric, for a task that reports only those
    (a built-in); an ``open`` task (a user's code) may report any name."""
    if not open_task and not metric.startswith("val_"):
        raise UsageError(f"--metric {metric}: expected a validation metric such as val_accuracy, val_f1_macro or val_loss")


def check_early(options: SweepOptions) -> None:
    """Raise the one-line error of a mistake that needs no task (see the module docstring)."""
    search, tracking = options.search, options.tracking
    if search.metric is not None and options.task in REGISTRY:
        check_metric(search.metric, open_task=False)
        reported = importlib.import_module(SETTINGS[options.task]).METRICS
        if search.metric not in reported:
            close = difflib.get_close_matches(search.metric, reported, n=1)
            raise UsageError(f"--metric {search.metric}: the {options.task} task reports {', '.join(reported)}"
                             + (f"; did you mean {close[0]}?" if close else ""))
    if search.space:
        load_space(search.space, None)  # its file and ranges; the names a task accepts wait for the task
    if search.data_dir is not None and not Path(search.data_dir).is_dir():
        raise UsageError(f"{search.data_dir}: data directory not found")
    check_store(resolve_store(tracking.store_dir, tracking.tracking_uri, tracking.storage), tracking.cache_dir)

"""Logging a sweep to MLflow: one parent run per sweep, one child run per trial.

Everything goes through :class:`mlflow.MlflowClient` with explicit run ids (no fluent
``mlflow.start_run`` state), so nesting is always right and worker threads or processes cannot
mix runs up. Curve points are buffered and written with ``log_batch`` (one call carries every
metric of an evaluation, and points that arrive within ``flush_seconds`` of each other share a
call): ``log_metric`` per value is the slow path peers use (mlflow#5269). A trial's buffer is
flushed before its run is closed, whatever way the trial ends.
"""

from __future__ import annotations

import json
import math
import posixpath
import re
import time
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag, ViewType
from mlflow.exceptions import MlflowException

from sweeplab.tracker.reconnect import Patience, reconnecting_client
from sweeplab.tracker.store import redact
from sweeplab.tracker.tags import EXPERIMENT_KIND, MODEL_TRAINING, ROLE, STATE
from sweeplab.tracker.writer import OrderedWriter

__all__ = ["SweepRecorder", "TrialRecorder", "metric_name_problem"]

MAX_PARAMS_PER_CALL = 100  # MLflow's log_batch limit


def _now_ms() -> int:
    return int(time.time() * 1000)


def _params(values: Mapping[str, Any]) -> list[Param]:
    return [Param(str(k), str(v)[:6000]) for k, v in values.items()]


class TrialRecorder:
    """One trial's child run: buffered curve points, summary, state and artifacts.

    Curve points are written off the training thread: :meth:`log_point` only buffers them and,
    when due, hands the buffer to the run's :class:`~sweeplab.tracker.writer.OrderedWriter`,
    which writes it in order on a thread of its own. A write that fails there is raised by the
    next :meth:`log_point`, :meth:`flush`, :meth:`log_summary` or :meth:`close`, as the write
    itself would have raised it on the training thread. :meth:`flush`, :meth:`log_summary` and
    :meth:`close` return once everything handed over is written; :meth:`close` writes every
    point before the final state."""

    def __init__(self, client: MlflowClient, run_id: str, artifact_uri: str, flush_seconds: float = 1.0) -> None:
        self.client = client
        self.run_id = run_id
        self.artifact_uri = artifact_uri
        self.flush_seconds = flush_seconds
        self._buffer: list[Metric] = []
        self._last_flush = -math.inf  # the first point is handed over at once
        self._writer = OrderedWriter(f"sweeplab-writer-{run_id[:8]}")
        self.closed = False

    def log_point(self, step: int, metrics: Mapping[str, float]) -> None:
        """Buffer one evaluation's metrics (``step`` is the x axis); returns without waiting for
        the store. The buffer is handed to the writer when ``flush_seconds`` have passed since
        the last hand-over and the writer is idle: points that come while a write is under way
        join the next one (one call instead of a queue of calls when the store is slower than the
        evaluations). Raises the error of a background write that failed since the last call."""
        stamp = _now_ms()
        for key, value in metrics.items():
            if key != "step" and value is not None:
                self._buffer.append(Metric(key, float(value), stamp, int(step)))
        self._writer.raise_error()
        if time.monotonic() - self._last_flush >= self.flush_seconds and self._writer.idle:
            self._hand_over()

    def _hand_over(self) -> None:
        """Queue the buffered points for the writer, in batches of up to 1,000 (MLflow's limit per call)."""
        while self._buffer:
            chunk, self._buffer = self._buffer[:1000], self._buffer[1000:]
            self._writer.submit(partial(self.client.log_batch, self.run_id, metrics=chunk, synchronous=True))
        self._last_flush = time.monotonic()

    def flush(self) -> None:
        """Write buffered points and wait until every point handed over is written."""
        self._hand_over()
        self._writer.drain()

    def discard_points(self) -> None:
        """Drop the points not written yet, buffered or queued (what a failed write could not store)."""
        self._buffer = []
        self._writer.discard()

    def log_summary(self, metrics: Mapping[str, float], tags: Mapping[str, str]) -> None:
        """Summary metrics (no step) and tags, in one call with whatever is still buffered, after
        the points handed over before; returns once all of it is written."""
        self._writer.raise_error()
        stamp = _now_ms()
        self._buffer += [Metric(k, float(v), stamp, 0) for k, v in metrics.items() if math.isfinite(v)]
        batch_tags = [RunTag(k, str(v)) for k, v in tags.items()]
        if self._buffer or batch_tags:
            first, self._buffer = self._buffer[:1000], self._buffer[1000:]
            self._writer.submit(partial(self.client.log_batch, self.run_id, metrics=first, tags=batch_tags, synchronous=True))
        self.flush()

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True)

    def artifact_location(self, path: str) -> str:
        """Full URI of an artifact of this run."""
        return f"{self.artifact_uri.rstrip('/')}/{path}"

    def log_file(self, local_path: Path, artifact_dir: str | None = None) -> str:
        """Log a file; returns its artifact URI."""
        self.client.log_artifact(self.run_id, str(local_path), artifact_dir)
        return self.artifact_location(f"{artifact_dir}/{local_path.name}" if artifact_dir else local_path.name)

    def log_folder(self, local_dir: Path, artifact_dir: str) -> str:
        """Log every file under a folder; returns the artifact URI of the folder."""
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_dir)
        return self.artifact_location(artifact_dir)

    def download(self, path: str, folder: Path) -> Path:
        """Copy an artifact file or folder of this run into ``folder``; returns its local path."""
        return Path(self.client.download_artifacts(self.run_id, path, str(folder)))

    def stored(self) -> Any:
        """The run as the store holds it now (``.data.metrics``, ``.data.tags``)."""
        return self.client.get_run(self.run_id)

    def log_text(self, text: str, artifact_file: str) -> str:
        self.client.log_text(self.run_id, text, artifact_file)
        return self.artifact_location(artifact_file)

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        self.client.log_dict(self.run_id, json.loads(json.dumps(data, default=str)), artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file)

    def is_running(self) -> bool:
        """Whether the store still has this run RUNNING (its process may have closed it since)."""
        return self.client.get_run(self.run_id).info.status == "RUNNING"

    def close(self, state: str, reason: str | None = None) -> None:
        """Flush, record the final state (and the reason of a failure) and end the run.

        MLflow status: FINISHED for complete and pruned trials (``sweeplab.state`` tells them
        apart), FAILED for failures, KILLED for interrupted trials.
        """
        if self.closed:
            return
        tags = {STATE: state}
        if reason:
            tags["sweeplab.fail_reason"] = reason[:4000]
        try:
            self.flush()
        finally:
            try:
                # What a failed or interrupted flush left is dropped, and a write still under way
                # ends first: nothing of the trial's points lands after its final state.
                self._writer.discard()
            finally:
                self.set_tags(tags)
                status = {"complete": "FINISHED", "pruned": "FINISHED", "killed": "KILLED"}.get(state, "FAILED")
                self.client.set_terminated(self.run_id, status=status)
                self.closed = True


#: The characters MLflow accepts in a metric name (on POSIX systems: letters, digits, ``_``,
#: ``-``, ``.``, space, ``/`` and ``:``), and names that would resolve to another path.
_METRIC_NAME = re.compile(r"^[/\w.\- :]+$")


def metric_name_problem(name: str) -> str | None:
    """Why MLflow would refuse ``name`` as a metric name, or ``None`` when it takes it; checked
    when a trainer reports, so that a bad name is one line before anything is written."""
    if not _METRIC_NAME.match(name):
        return "expected letters, digits, _ - . / : and spaces"
    normal = posixpath.normpath(name)
    if normal != name or normal.startswith(("..", "/")):
        return f"it would be stored as the path {normal!r}"
    return None


def _active_run(client: MlflowClient, run_id: str | None, experiment_id: str) -> list[Any]:
    """``[run]`` when ``run_id`` names a live run of the experiment, else ``[]``."""
    if not run_id:
        return []
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return []
    alive = run.info.experiment_id == experiment_id and run.info.lifecycle_stage == "active"
    return [run] if alive else []


class SweepRecorder:
    """The sweep's parent run, found again on a rerun (same experiment and study name)."""

    def __init__(self, client: MlflowClient, experiment_id: str, parent_run_id: str, base_tags: Mapping[str, str]) -> None:
        self.client = client
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.base_tags = dict(base_tags)

    @classmethod
    def open(
        cls,
        tracking_uri: str,
        experiment: str,
        artifact_root: str | None,
        study_name: str,
        base_tags: Mapping[str, str],
        params: Mapping[str, Any],
        known_run_id: str | None = None,
        outage_limit: float = 300.0,
    ) -> SweepRecorder:
        """Get or create the experiment and the sweep's parent run; log the sweep's params.

        ``known_run_id`` is the parent run the study recorded when it was made: a worker that
        joins the sweep later uses that run, even if it started while another worker was still
        creating it (a search by tag could miss it and make a second parent). Every call to the
        store rides out an outage of up to ``outage_limit`` seconds (:mod:`sweeplab.tracker.reconnect`)."""
        patience = Patience(f"the MLflow tracking store {redact(tracking_uri)}", outage_limit)
        client = reconnecting_client(MlflowClient(tracking_uri=tracking_uri), patience)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            location = f"{artifact_root.rstrip('/')}/{experiment}" if artifact_root else None
            experiment_id = client.create_experiment(experiment, artifact_location=location, tags={EXPERIMENT_KIND: MODEL_TRAINING})
        else:
            experiment_id = found.experiment_id
            if EXPERIMENT_KIND not in found.tags:  # made by an older sweeplab, or by hand
                client.set_experiment_tag(experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
        existing = _active_run(client, known_run_id, experiment_id) or client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{ROLE}` = 'sweep' and tags.`sweeplab.study` = '{study_name}'",
            run_view_type=ViewType.ACTIVE_ONLY,
            order_by=["attributes.start_time ASC"],
            max_results=1,
        )
        tags = {**base_tags, ROLE: "sweep", "sweeplab.study": study_name}
        if existing:
            run_id = existing[0].info.run_id
            client.update_run(run_id, status="RUNNING")
            client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True)
        else:
            run_id = client.create_run(experiment_id, tags=tags, run_name=study_name).info.run_id
            items = list(_params(params))
            for i in range(0, len(items), MAX_PARAMS_PER_CALL):
                client.log_batch(run_id, params=items[i : i + MAX_PARAMS_PER_CALL], synchronous=True)
        return cls(client, experiment_id, run_id, base_tags)

    def start_trial(self, number: int, params: Mapping[str, Any], tags: Mapping[str, str], flush_seconds: float = 1.0) -> TrialRecorder:
        """Create the child run of trial ``number`` with its params and tags, in two calls."""
        run_tags = {
            **self.base_tags,
            **tags,
            "mlflow.parentRunId": self.parent_run_id,
            ROLE: "trial",
            "sweeplab.trial": str(number),
            STATE: "running",
        }
        run = self.client.create_run(self.experiment_id, tags=run_tags, run_name=f"trial-{number:03d}")
        items = _params(params)
        for i in range(0, len(items), MAX_PARAMS_PER_CALL):
            self.client.log_batch(run.info.run_id, params=items[i : i + MAX_PARAMS_PER_CALL], synchronous=True)
        return TrialRecorder(self.client, run.info.run_id, run.info.artifact_uri, flush_seconds)

    def running_trials(self) -> dict[int, TrialRecorder]:
        """The sweep's child runs that are still RUNNING, by trial number: live trials, and those
        a killed process left behind (``sweeps.recovery`` tells them apart)."""
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{self.parent_run_id}' and attributes.status = 'RUNNING'",
            max_results=10000,
        )
        return {int(run.data.tags.get("sweeplab.trial", -1)): TrialRecorder(self.client, run.info.run_id, run.info.artifact_uri)
                for run in runs}

    def trial_tags(self, run_id: str) -> dict[str, str] | None:
        """The tags of child run ``run_id`` as the store holds them now; ``None`` when the store
        has no such run (it is in another store, or was deleted)."""
        try:
            return dict(self.client.get_run(run_id).data.tags)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise

    def trial(self, run_id: str) -> TrialRecorder:
        """A recorder for an existing child run (to add to a finished trial, e.g. its test score)."""
        return TrialRecorder(self.client, run_id, self.client.get_run(run_id).info.artifact_uri)

    def log_summary(self, metrics: Mapping[str, float], tags: Mapping[str, str]) -> None:
        stamp = _now_ms()
        self.client.log_batch(
            self.parent_run_id,
            metrics=[Metric(k, float(v), stamp, 0) for k, v in metrics.items() if math.isfinite(v)],
            tags=[RunTag(k, str(v)) for k, v in tags.items()],
            synchronous=True,
        )

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        self.client.log_dict(self.parent_run_id, json.loads(json.dumps(data, default=str)), artifact_file)

    def log_file(self, path: Path) -> None:
        self.client.log_artifact(self.parent_run_id, str(path))

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self.client.log_figure(self.parent_run_id, figure, artifact_file)

    def close(self, status: str = RunStatus.to_string(RunStatus.FINISHED)) -> None:
        self.client.set_terminated(self.parent_run_id, status=status)

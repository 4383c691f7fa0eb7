"""One sweep's resume states carry over between its served ``--ray ADDRESS`` workers (states among
the parent run's artifacts) and the processes on the embedded default store (``sweep run``,
``--workers``, ``--ray local``, the head itself: the local file), both ways, on a real embedded
store: the embedded default reads what a node stored and deletes it with its own file, without
uploading a copy on each save; the head shares the files a local run saved before nodes start."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from mlflow import MlflowClient

from sweeplab.sweeps.resume_states import resume_store, share_local_states
from sweeplab.tracker.embedded import ensure_tracking_db
from sweeplab.tracker.resume_artifacts import ArtifactVersions
from sweeplab.tracker.runs import SweepRecorder
from sweeplab.tracker.store import resolve_store

FIRST = 3


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The head's embedded default store, made once (its database takes seconds)."""
    store = resolve_store(tmp_path_factory.mktemp("head") / "mlruns")
    ensure_tracking_db(store.root / "mlflow.db", store.artifact_root)
    return store


@pytest.fixture()
def head(embedded: Any, tmp_path: Path, request: pytest.FixtureRequest) -> SimpleNamespace:
    """The head's embedded default store (``checked``) with a sweep parent run of its own
    (``recorder``) and a study of its own (``study``: a name a file cannot hold as it is), and
    ``node``: what a served node's worker resolves (the same tracking store, its own folder)."""
    client = MlflowClient(embedded.tracking_uri)
    experiment = client.create_experiment(request.node.name, artifact_location=f"{embedded.artifact_root}/{request.node.name}")
    recorder = SweepRecorder(client, experiment, client.create_run(experiment).info.run_id, {})
    node = resolve_store(tmp_path / "node", tracking_uri=embedded.tracking_uri)
    assert embedded.is_default and not node.is_default
    return SimpleNamespace(checked=SimpleNamespace(store=embedded), recorder=recorder, node=SimpleNamespace(store=node),
                           study=f"sweep: {request.node.name[:40]}/a b", study_id=0,
                           versions=ArtifactVersions(client, recorder.parent_run_id, f"resume/trial-{FIRST}"))


def _store(checked: Any, head: SimpleNamespace) -> Any:
    return resume_store(checked, head.recorder, head.study, head.study_id, FIRST)


def _share(head: SimpleNamespace) -> list[int]:
    return share_local_states(head.checked, head.recorder, head.study, head.study_id)


def test_the_embedded_default_goes_on_from_a_nodes_stored_state_saves_only_its_file_and_deletes_both(
        head: SimpleNamespace) -> None:
    _store(head.node, head).save({"step": 2})  # a served node's worker: stored among the parent run's artifacts
    [stored] = head.versions.newest_first()
    here = _store(head.checked, head)
    file = here.folder.with_suffix(".pt")  # STORE/resume/STUDY-ID-HASH/trial-3.pt, beside trial-3.d
    assert here.load() == {"step": 2} and not file.exists()  # a local rerun goes on from it

    time.sleep(0.02)  # a file's time is the kernel's coarse clock: keep it past the node's version
    here.save({"step": 3})
    assert file.exists() and head.versions.newest_first() == [stored]  # no copy uploaded on a save
    assert here.load() == {"step": 3}  # the newer local file wins

    here.delete()  # a finished (or given-up) trial: both gone
    assert not file.exists() and head.versions.newest_first() == []


def test_the_head_shares_a_local_runs_states_with_nodes_that_start_after_it(
        head: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    here = _store(head.checked, head)
    here.save({"step": 5})  # an interrupted `sweep run` (or --workers, --ray local)
    here.folder.mkdir()  # a command's own folder beside it (trial-3.d) is no state to share
    assert head.versions.newest_first() == []
    assert _share(head) == [FIRST]
    assert _share(head) == []  # stored already
    node = _store(head.node, head)
    assert not node.folder.with_suffix(".pt").exists() and node.load() == {"step": 5}  # a node goes on from it

    downloads: list[object] = []
    monkeypatch.setattr(ArtifactVersions, "fetched", lambda self: downloads.append(self) or iter(()))
    assert here.load() == {"step": 5} and downloads == []  # the head reads its own file, not a copy of it
    monkeypatch.undo()

    time.sleep(0.02)
    node.save({"step": 6})  # the node goes on; the head's older file is not shared over it
    assert _share(head) == []
    assert here.load() == {"step": 6}

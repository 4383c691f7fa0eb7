"""The sweep explains itself in pictures: the parent run gets them when the sweep ends, and
``sweep report`` writes them with the best trials on one self-contained HTML page."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from sweeplab.tracker.report import CAPTIONS
from tests.test_own_trainer import MY_TRAINER

#: The README's example trainer, with a declared name (read back by that name and by its file).
TRAINER = "import sweeplab\n\n" + MY_TRAINER.replace(
    "def fit(", '@sweeplab.trainer(name="report-demo", metric="val_accuracy")\ndef fit(')
SPACE = '''\
[search.lr]
low = 0.01
high = 0.9
log = true

[search.batch_size]
choices = [8, 32, 128]  # not used by the trainer: a parameter that does not matter

[fixed]
epochs = 12
'''
PNG = b"\x89PNG\r\n\x1a\n"


def _sweep(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sweeplab", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "COLUMNS": "200"})


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder where a 5-trial sweep of a small function trainer ran, with its pictures."""
    folder = tmp_path_factory.mktemp("report")
    (folder / "demo.py").write_text(TRAINER)
    (folder / "demo.toml").write_text(SPACE)
    done = _sweep(["run", "demo.py:fit", "--space", "demo.toml", "--trials", "5", "--sampler", "random",
                   "--pruner", "none", "--checkpoints", "none"], folder)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder


def _images(page: str) -> dict[str, bytes]:
    found = re.findall(r'<figure id="(\w+)"><img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)">', page)
    return {name: base64.b64decode(data) for name, data in found}


def test_the_parent_run_holds_the_sweeps_pictures(swept: Path) -> None:
    client = MlflowClient(tracking_uri=f"sqlite:///{swept / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sweeplab-report-demo")
    assert experiment is not None
    parent = client.search_runs([experiment.experiment_id], filter_string="tags.`sweeplab.role` = 'sweep'")[0]
    stored = {Path(a.path).name for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert stored == {f"{name}.png" for name in CAPTIONS}


def test_sweep_report_writes_one_page_with_every_picture_and_the_best_trial(swept: Path) -> None:
    done = _sweep(["report", "--task", "demo.py:fit", "--out", "page.html"], swept)
    assert done.returncode == 0, done.stderr
    page = (swept / "page.html").read_text()
    images = _images(page)
    assert set(images) == set(CAPTIONS) and all(data.startswith(PNG) and len(data) > 5000 for data in images.values())
    best = _sweep(["best", "--task", "report-demo", "--json"], swept)
    import json

    top = json.loads(best.stdout)[0]
    first = re.search(r'<table class="trials"><tr><th>trial</th><td><a href="([^"]+)">(\d+)</a></td>.*?</tr>'
                      r"<tr><th>.*?</th><td>([\d.]+)</td>", page, re.S)  # the best trial's column: number, value
    assert first is not None and int(first.group(2)) == top["trial"] and float(first.group(3)) == pytest.approx(top["value"], rel=1e-3)
    assert re.fullmatch(rf"http://127\.0\.0\.1:5000/#/experiments/\d+/runs/{top['run_id']}\b.*", first.group(1))  # its run
    assert "src=\"http" not in page and "<script" not in page  # nothing fetched from elsewhere


def test_a_report_drawn_afresh_has_the_same_pictures_and_reads_no_torch(swept: Path) -> None:
    code = ("import sys\nfrom sweeplab import api\n"
            "path = api.report('report-demo', out='fresh.html', fresh=True)\n"
            "print(path.name, sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=swept, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["fresh.html", "[]"]
    assert set(_images((swept / "fresh.html").read_text())) == set(CAPTIONS)


def test_report_refuses_a_bad_out_before_reading_and_says_when_there_is_no_sweep(swept: Path, tmp_path: Path) -> None:
    bad = _sweep(["report", "--out", str(tmp_path / "no" / "such" / "page.html")], swept)
    assert bad.returncode == 2 and "--out" in bad.stderr and len(bad.stderr.strip().splitlines()) <= 3
    none = _sweep(["report", "--task", "report-demo", "--study", "nothing-here"], swept)
    assert none.returncode == 1 and "no sweeps" in none.stderr


def test_the_rebuilt_study_keeps_each_trials_own_number() -> None:
    from sweeplab.tracker.query import SweepTrials, TrialCurve
    from sweeplab.tracker.reading import StoredRun
    from sweeplab.tracker.sweep_plots import study_of

    def trial(number: int, state: str, value: float | None) -> TrialCurve:
        return TrialCurve(number=number, run_id=f"r{number}", state=state, params={"lr": str(0.1 * (number + 1))},
                          value=value, best_step=1.0, onset_step=None, curve=[(1, value or 0.0)], loss=[])

    parent = StoredRun(run_id="p", name="s", experiment_id="1", experiment="e", status="FINISHED", start_time=0)
    sweep = SweepTrials(parent=parent, metric="val_accuracy", direction="maximize", x_axis="epoch",
                        trials=[trial(0, "complete", 0.5), trial(2, "complete", 0.8), trial(3, "pruned", None)])
    study = study_of(sweep)
    assert [(t.number, t.state.name) for t in study.trials] == [(0, "COMPLETE"), (1, "FAIL"), (2, "COMPLETE"), (3, "PRUNED")]
    assert study.best_trial.number == 2 and study.best_trial.user_attrs["trial"] == 2


def test_a_report_after_a_resume_without_pictures_draws_them_afresh(swept: Path) -> None:
    """Last in this module: it resumes the module's sweep to 6 trials with --no-plots, so the
    parent run keeps pictures of 5 trials, which the report must not hand out as current."""
    client = MlflowClient(tracking_uri=f"sqlite:///{swept / 'mlruns' / 'mlflow.db'}")
    parent = client.search_runs([client.get_experiment_by_name("sweeplab-report-demo").experiment_id],
                                filter_string="tags.`sweeplab.role` = 'sweep'")[0]
    stored = (Path(parent.info.artifact_uri.removeprefix("file://")) / "sweep" / "curves_by_epoch.png").read_bytes()
    done = _sweep(["run", "demo.py:fit", "--space", "demo.toml", "--trials", "6", "--sampler", "random",
                   "--pruner", "none", "--checkpoints", "none", "--no-plots"], swept)
    assert done.returncode == 0, done.stderr[-3000:]
    done = _sweep(["report", "--task", "report-demo", "--out", "resumed.html"], swept)
    assert done.returncode == 0, done.stderr
    page = (swept / "resumed.html").read_text()
    assert "6 complete" in page and _images(page)["curves_by_epoch"] != stored


def test_best_says_a_trial_has_no_checkpoint_because_the_sweep_kept_none(swept: Path) -> None:
    """The swept trials ran with ``--checkpoints none``; their runs record it, and ``sweep best``
    says so instead of guessing between that and a trainer that passed no state."""
    done = _sweep(["best", "--task", "demo.py:fit"], swept)
    assert done.returncode == 0, done.stderr
    assert "no checkpoint: --checkpoints none" in done.stdout and "passed none" not in done.stdout, done.stdout

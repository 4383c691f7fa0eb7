"""Bad input: one line naming the thing and what was expected, exit code 2, nothing written."""

from __future__ import annotations

import importlib
import json
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sweeplab.cli import app
from sweeplab.errors import UsageError
from sweeplab.sweeps.checks import check
from sweeplab.sweeps.options import SweepOptions
from sweeplab.tasks import REGISTRY, SETTINGS, check_before_loading
from tests.conftest import TINY

runner = CliRunner()
EXAMPLE_SPACE = Path(__file__).resolve().parents[1] / "examples" / "command_line" / "train.toml"


def _run(tmp_path: Path, *args: str):
    return runner.invoke(app, ["run", "--store-dir", str(tmp_path / "store"), *args])  # args may end in a command


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["nosuchtask"], "unknown task 'nosuchtask'"),
        (["sentiment", "--trials", "0"], "--trials 0: expected a positive number"),
        (["sentiment", "--data-dir", "/no/such/dir"], "/no/such/dir: data directory not found"),
        (["sentiment", "--sampler", "annealing"], "--sampler annealing: expected one of"),
        (["sentiment", "--set", "bogus=1"], "--set bogus: unknown parameter"),
        (["sentiment", "--set", "batch_size=big"], "--set batch_size=big: expected a int"),
        (["sentiment", "--space", "nope.toml"], "nope.toml: space file not found"),
        (["news", "--data-dir", "tests/fixtures"], "no news training file found (expected exactly one of: cnews.train.txt"),
        (["news", "--set", "layout=cnews"], "cnews.train.txt: file not found (the cnews layout's training file)"),
        (["news", "--space", "sentiment"], "is for task 'sentiment'"),
        (["--space", str(EXAMPLE_SPACE), "--", sys.executable, str(EXAMPLE_SPACE.with_name("train.py")), "--lr", "{learning_rate}"],
         "{learning_rate} in the command is not a value of the space"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path: Path, args: list[str], expected: str) -> None:
    result = _run(tmp_path, *args)
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert expected in message and len(message.splitlines()) == 1, message
    assert "Traceback" not in message
    assert not (tmp_path / "store").exists()


def test_header_error_names_the_file_and_line(tmp_path: Path, sentiment_dir: Path) -> None:
    (sentiment_dir / "train.txt").write_text("id,label\n1,positive\n", encoding="utf-8")
    result = _run(tmp_path, "sentiment", "--data-dir", str(sentiment_dir))
    assert result.exit_code == 2
    assert f"{sentiment_dir / 'train.txt'}:1: expected the header 'guid,tag'" in result.output.replace("\n", "")
    assert not (tmp_path / "store").exists()


def _cut_last_line(train: Path) -> str:
    """A copy that stopped mid-line: ``60,posi``, no newline."""
    train.write_text(train.read_text(encoding="utf-8")[:-5], encoding="utf-8")
    return (f"{train}:61: the last line is cut short (no newline at the end of the file: a copy or download that "
            "stopped?); expected a complete file (fix it, or pass --allow-bad-rows to go on with the 59 usable rows)")


def _two_malformed_rows(train: Path) -> str:
    lines = train.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[2], lines[4] = "3;positive\n", "5\n"
    train.write_text("".join(lines), encoding="utf-8")
    return (f"{train}: 2 of 60 rows skipped (3.3%, more than 1%): 2 x malformed row (expected guid,tag) at lines 3, 5; "
            "fix them, or pass --allow-bad-rows to go on with the 58 rows left")


@pytest.mark.parametrize("damage", [_cut_last_line, _two_malformed_rows])
def test_bad_rows_stop_the_sweep_before_any_trial_with_their_lines(
        tmp_path: Path, sentiment_dir: Path, damage: Callable[[Path], str], caplog: pytest.LogCaptureFixture) -> None:
    """A truncated file or more than 1% of a file's rows skipped: one line naming the file, the
    line numbers and --allow-bad-rows, exit 2, before any store or trial; with the flag the sweep
    goes on and says what it skipped before its first trial."""
    train = sentiment_dir / "train.txt"
    expected = damage(train)
    result = _run(tmp_path, "sentiment", "--data-dir", str(sentiment_dir), "--trials", "1", *TINY)
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message, message
    assert expected in message, message
    assert not (tmp_path / "store").exists()

    with caplog.at_level(logging.WARNING, logger="sweeplab"):
        checked = check(SweepOptions.of("sentiment", data_dir=sentiment_dir, store_dir=tmp_path / "store",
                                        allow_bad_rows=True))
    assert checked.loaded.reports[0].lost == (1 if damage is _cut_last_line else 2)
    shown = [r.getMessage() for r in caplog.records]
    assert shown == [f"data: {line}" for line in checked.loaded.reports[0].problems()] and shown, shown
    assert not (tmp_path / "store").exists()


def test_space_with_unknown_key_and_empty_range(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[search.learning_rate]\nlow = 1\nhigh = 2\n", encoding="utf-8")
    result = _run(tmp_path, "sentiment", "--space", str(bad))
    assert result.exit_code == 2 and "unknown parameter [search.learning_rate]" in result.output
    bad.write_text("[search.lr]\nlow = 1e-3\nhigh = 1e-3\n", encoding="utf-8")
    result = _run(tmp_path, "sentiment", "--space", str(bad))
    assert result.exit_code == 2 and "empty range" in result.output
    assert not (tmp_path / "store").exists()


def test_grid_sampler_on_a_continuous_space_is_rejected_before_running(tmp_path: Path) -> None:
    space = tmp_path / "s.toml"
    space.write_text("[search.lr]\nlow = 1e-6\nhigh = 1e-4\n", encoding="utf-8")
    result = _run(tmp_path, "sentiment", "--space", str(space), "--sampler", "grid")
    assert result.exit_code == 2 and "add grid" in result.output


def test_best_without_a_store_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["best", "--task", "sentiment", "--store-dir", str(tmp_path / "none")])
    assert result.exit_code == 2 and "no tracking store here" in result.output


def test_unreadable_images_stop_the_sweep_before_any_trial_unless_told_to_go_on(tmp_path: Path, sentiment_dir: Path,
                                                                                caplog: pytest.LogCaptureFixture) -> None:
    """Images are decoded while the data are prepared: one that does not decode loses its row,
    and a sample that loses more than 1% stops there with one line; with --allow-bad-rows the
    sweep goes on, saying so before its first trial (not only in the final summary)."""
    first = (sentiment_dir / "train.txt").read_text(encoding="utf-8").splitlines()[1].split(",")[0]
    (sentiment_dir / "data" / f"{first}.jpg").write_bytes(b"broken")
    stopped = _run(tmp_path, "sentiment", "--data-dir", str(sentiment_dir), "--trials", "1", "--set", "epochs=1", *TINY)
    assert stopped.exit_code == 2 and "trial 0" not in stopped.output
    refusal = stopped.output.strip().splitlines()[-1]
    assert f"train.txt: 1 of 60 rows skipped" in refusal and f"undecodable image file at {first}.jpg" in refusal
    assert "--allow-bad-rows" in refusal
    with caplog.at_level(logging.WARNING, logger="sweeplab"):
        result = _run(tmp_path, "sentiment", "--data-dir", str(sentiment_dir), "--trials", "1", "--set", "epochs=1",
                      "--allow-bad-rows", *TINY)
    assert result.exit_code == 0, result.output
    assert f"1 x undecodable image file (first: {first}.jpg)" in result.output.replace("\n", "")  # the summary
    warned = [r.getMessage() for r in caplog.records if "undecodable image" in r.getMessage()]
    assert warned == [f"data: train.txt: 1 x undecodable image file (first: {first}.jpg)"] or \
        warned == [f"data: {sentiment_dir / 'train.txt'}: 1 x undecodable image file (first: {first}.jpg)"], warned


def test_news_file_with_nothing_usable_names_file_and_problems(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "cnews.train.txt").write_bytes("体育\t比赛\n财经\t股市\n".encode("gbk"))
    result = _run(tmp_path, "news", "--data-dir", str(data))
    assert result.exit_code == 2
    message = result.output.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message
    assert "cnews.train.txt: no usable lines (" in message and "2 x not UTF-8 (first: 1, 2)" in message
    assert not (tmp_path / "store").exists()


def test_status_without_a_store_is_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["status", "--store-dir", str(tmp_path / "none")])
    assert result.exit_code == 2 and "no tracking store here" in result.output
    result = runner.invoke(app, ["status", "--task", "nosuchtask", "--store-dir", str(tmp_path / "none")])
    assert result.exit_code == 2 and "unknown task 'nosuchtask'" in result.output


#: Libraries that take seconds to import (torch alone 4 s and more): a mistake that needs no
#: task, store or data is answered before any of them is loaded.
HEAVY = ("torch", "torchvision", "transformers", "mlflow", "optuna", "sklearn")

#: ``sweep run ARGS`` in a fresh process, which then prints its exit code and the heavy
#: libraries it had loaded by then.
_RUN_AND_REPORT = f"""
import json, sys
from sweeplab.cli import main
sys.argv = ["sweep", "run", *sys.argv[1:]]
try:
    main()
except SystemExit as exc:
    print(json.dumps([exc.code, sorted(m for m in {HEAVY!r} if m in sys.modules)]))
"""


@pytest.mark.parametrize(("args", "expected"), [
    (["sentiment", "--store-dir", "/proc/x"], "--store-dir /proc/x: cannot write there"),
    (["news", "--metric", "bogus"], "--metric bogus: expected a validation metric such as val_accuracy"),
    (["sentiment", "--metric", "val_acuracy"], "--metric val_acuracy: the sentiment task reports val_accuracy, "
                                              "val_f1_macro, val_roc_auc, val_loss; did you mean val_accuracy?"),
    (["sentiment", "--space", "/no/such/space.toml"], "/no/such/space.toml: space file not found"),
    (["sentiment", "--space", "{tmp}/bad.toml"], "bad.toml: [search.lr] is an empty range: low=1.0 must be below high=0.1"),
    (["retrieval", "--data-dir", "/no/such/dir"], "/no/such/dir: data directory not found"),
])
def test_a_mistake_about_the_stores_space_or_data_is_answered_before_the_task_is_imported(
        tmp_path: Path, args: list[str], expected: str) -> None:
    """The stores, the space file and the data folder need no task: said before torch is imported."""
    (tmp_path / "bad.toml").write_text("[search.lr]\nlow = 1.0\nhigh = 0.1\n", encoding="utf-8")
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    done = subprocess.run([sys.executable, "-c", _RUN_AND_REPORT, "--store-dir", str(tmp_path / "store"), *args],
                          capture_output=True, text=True, timeout=120)
    code, loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert code == 2 and not set(loaded) - {"optuna", "mlflow"}, (loaded, done.stderr)
    message = done.stderr.strip()
    assert expected in message and len(message.splitlines()) == 1, message


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["nosuchtask"], "unknown task 'nosuchtask'"),
        (["train.py"], "train.py: name the training function too"),
        (["nowhere.py:fit"], "nowhere.py: no such file (expected FILE.py:FUNCTION)"),
        (["sentiment", "--trials", "0"], "--trials 0: expected a positive number"),
        (["news", "--sampler", "annealing"], "--sampler annealing: expected one of"),
        (["sentiment", "--set", "lr=abc"], "--set lr=abc: expected a float"),
        (["news", "--set", "bogus=1"], "--set bogus: unknown parameter for task news"),
        (["retrieval", "--set", "freeze_text=maybe"], "--set freeze_text=maybe: expected a bool"),
        (["retrieval", "--set", "batch_size=1"], "--set batch_size=1: expected an integer >= 2"),
        (["news", "--set", "layout=cnews2"], "--set layout=cnews2: expected one of auto, cnews, thucnews, ccf"),
        (["news", "--max-retries", "-1"], "--max-retries -1: expected a whole number >= 0"),
        (["news", "--checkpoint-minutes", "0"], "--checkpoint-minutes 0: expected a number of minutes > 0"),
        (["news", "--gpus-per-trial", "2"], "--gpus-per-trial 2: name the cards the trials share with --gpus"),
        (["news", "--gpus", "0,1,2", "--gpus-per-trial", "2"], "the 3 cards of --gpus 0,1,2 do not make whole trials of 2"),
        (["news", "--gpus", "0,0,1,1", "--gpus-per-trial", "2"], "a trial would get cards 0,0, one card twice"),
        (["--", "pythn", "train.py"], "pythn: command not found on PATH"),
        (["--", sys.executable, "trian.py", "--lr", "{lr}"], "trian.py: no such file (the script of `sweep run --"),
        (["news", "--", sys.executable, "train.py"], "give a TASK or a command after --, not both"),
        (["--trials", "3"], "sweep run needs a TASK"),
        (["--"], "`sweep run --` needs a command after the --"),
    ],
)
def test_a_mistake_needing_no_task_is_answered_before_torch_is_imported(tmp_path: Path, args: list[str], expected: str) -> None:
    """Importing torch and a task's trainer costs seconds; these errors come first, in one line."""
    done = subprocess.run([sys.executable, "-c", _RUN_AND_REPORT, "--store-dir", str(tmp_path / "store"), *args],
                          capture_output=True, text=True, timeout=120)
    code, loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert (code, loaded) == (2, []), done.stderr
    message = done.stderr.strip()
    assert expected in message and len(message.splitlines()) == 1, message
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize(
    ("task", "setting"),
    [
        ("news", "bogus=1"), ("news", "lr=abc"), ("news", "lr=0"), ("news", "epochs=2.5"), ("news", "layout=cnews2"),
        ("news", "kernel_sizes=2,x"), ("sentiment", "augment=maybe"), ("sentiment", "modality=audio"),
        ("sentiment", "plateau_factor=1"), ("retrieval", "batch_size=1"), ("retrieval", "freeze_text=maybe"),
    ],
)
def test_the_early_check_says_what_the_sweeps_own_check_says(tmp_path: Path, task: str, setting: str) -> None:
    """check_before_loading repeats what the sweep's checks say after loading the task
    (parse_override, check_space): the same refusal, in the same words."""
    key, _, value = setting.partition("=")
    with pytest.raises(UsageError) as early:
        check_before_loading(task, {key: value})
    with pytest.raises(UsageError) as full:
        check(SweepOptions.of(task, store_dir=tmp_path / "store", overrides={key: value}))
    assert str(early.value) == str(full.value)


@pytest.mark.parametrize("task", sorted(REGISTRY))
def test_the_early_check_lets_every_default_through(task: str) -> None:
    """Each built-in's defaults, given back as --set strings, are values it accepts."""
    defaults = importlib.import_module(SETTINGS[task]).DEFAULTS
    check_before_loading(task, {key: str(value) for key, value in defaults.items()})


def test_every_built_in_has_its_settings_and_the_trainer_uses_them() -> None:
    """What the early check reads is what the loaded task holds."""
    from sweeplab.datasets.news import LAYOUTS
    from sweeplab.tasks import get_task
    from sweeplab.trainers.tokens import SCRATCH

    assert SETTINGS.keys() == REGISTRY.keys()
    for name, module in SETTINGS.items():
        settings, task = importlib.import_module(module), get_task(name)
        assert (task.defaults, task.limits) == (settings.DEFAULTS, settings.LIMITS), name
    news = importlib.import_module(SETTINGS["news"])
    # The metrics --metric is checked against before the import are those an evaluation reports.
    import numpy as np

    from sweeplab.trainers.metrics import classification_metrics
    from sweeplab.trainers.retrieval import retrieval_metrics

    probabilities = np.array([[0.9, 0.1], [0.2, 0.8]])
    assert set(news.METRICS) == set(classification_metrics(np.array([0, 1]), probabilities))
    assert importlib.import_module(SETTINGS["sentiment"]).METRICS == news.METRICS
    retrieved = {"val_loss", *retrieval_metrics(np.eye(2), [[0], [1]], [[0], [1]], "val_")}
    assert set(importlib.import_module(SETTINGS["retrieval"]).METRICS) == retrieved
    assert news.LAYOUT_NAMES == tuple(LAYOUTS)  # the reader's layouts, named without importing it
    assert news.DEFAULTS["model"] == importlib.import_module(SETTINGS["retrieval"]).DEFAULTS["model"] == SCRATCH


def test_a_conditional_value_in_a_command_is_refused_before_any_trial(tmp_path: Path) -> None:
    space = tmp_path / "space.toml"
    space.write_text('[search.opt]\nchoices = ["sgd", "adam"]\n\n[search.momentum]\nlow = 0.1\nhigh = 0.9\n'
                     'when = { opt = "sgd" }\n', encoding="utf-8")
    result = _run(tmp_path, "--space", str(space), "--", sys.executable, str(EXAMPLE_SPACE.with_name("train.py")),
                  "--opt", "{opt}", "--momentum", "{momentum}")
    assert result.exit_code == 2, result.output
    message = result.output.strip()
    assert "{momentum} in the command is a conditional value of the space" in message and len(message.splitlines()) == 1

"""Parameter limits: a value no trial can run with is one error naming it, before the first trial."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from sweeplab.cli import app
from sweeplab.core import BOOLEAN, FRACTION, POSITIVE, POSITIVE_INT, Limit, Task
from sweeplab.errors import UsageError
from sweeplab.sweeps.checks import parse_override
from sweeplab.sweeps.limits import check_space
from sweeplab.sweeps.space import Space, builtin_spaces, load_space
from sweeplab.tasks import get_task
from tests.conftest import TINY as SENTIMENT_TINY
from tests.test_news_end_to_end import TINY_NEWS
from tests.test_retrieval_end_to_end import TINY as RETRIEVAL_TINY
from tests.trainers.test_retrieval import TINY as RETRIEVAL_TRAINER_TINY

SENTIMENT = get_task("sentiment")
TASKS = ("news", "sentiment", "retrieval")


def _space(tmp_path: Path, text: str, task: Task = SENTIMENT) -> Space:
    path = tmp_path / "mine.toml"
    path.write_text(f'task = "{task.name}"\n{text}', encoding="utf-8")
    return load_space(path, task.defaults, task.name)


def _with_sets(space: Space, task: Task, sets: dict[str, str]) -> tuple[Space, set[str]]:
    """The space with ``--set`` values applied as the driver does (typed by the defaults)."""
    overrides = {key: parse_override(task, key, value) for key, value in sets.items()}
    return space.with_overrides(overrides), set(overrides)


def _error(space: Space, overrides: Collection[str] = (), task: Task = SENTIMENT) -> str:
    with pytest.raises(UsageError) as caught:
        check_space(space, task.limits, overrides)
    message = str(caught.value)
    assert "\n" not in message
    return message


def _sets(flags: list[str]) -> dict[str, str]:
    """``["--set", "a=1", ...]`` -> ``{"a": "1"}``."""
    return dict(flag.split("=", 1) for flag in flags if flag != "--set")


# --- each kind of bad value -------------------------------------------------------------------

def test_a_set_batch_size_of_zero_names_the_flag_and_the_expectation() -> None:
    space, sets = _with_sets(load_space("sentiment", SENTIMENT.defaults, "sentiment"), SENTIMENT, {"batch_size": "0"})
    message = _error(space, sets)
    assert message == "--set batch_size=0: expected an integer >= 1"


@pytest.mark.parametrize(
    ("text", "fragments"),
    [pytest.param("[fixed]\nbatch_size = 0\n", ["mine.toml: fixed.batch_size 0", "expected an integer >= 1"], id="fixed-batch-0"),
     pytest.param("[search.lr]\nlow = -0.1\nhigh = 0.1\n", ["search.lr low -0.1", "expected a number > 0"], id="negative-lr-low"),
     pytest.param("[search.dropout]\nlow = 0.1\nhigh = 1.5\n", ["search.dropout high 1.5", "[0, 1)"], id="dropout-high"),
     pytest.param("[search.epochs]\nlow = 2\nhigh = 10\ngrid = [4, 0]\n", ["grid value 0 of epochs", "expected an integer >= 1"],
                  id="grid-value"),
     pytest.param('[search.complexity]\nchoices = ["high", "medium"]\n',
                  ["search.complexity choice 'medium'", "expected one of high, low"], id="unknown-choice"),
     pytest.param("[search.batch_size]\nchoices = [16, -4]\n", ["search.batch_size choice -4"], id="numeric-choice"),
     pytest.param("[fixed]\ndropout = 1.0\n", ["fixed.dropout 1.0", "expected a number in [0, 1)"], id="dropout-one"),
     pytest.param("[fixed]\nepochs = 2.5\n", ["fixed.epochs 2.5", "expected an integer >= 1"], id="float-for-integer"),
     pytest.param("[search.epochs]\nlow = 1.0\nhigh = 3.0\n", ["search.epochs", "samples fractions", "an integer >= 1"],
                  id="float-range-for-integer"),
     pytest.param('[fixed]\nfreeze_backbones = "false"\n', ["fixed.freeze_backbones 'false'", "expected one of true, false"],
                  id="string-for-switch")],
)
def test_a_bad_value_in_a_space_file_is_named_with_its_place(tmp_path: Path, text: str, fragments: list[str]) -> None:
    message = _error(_space(tmp_path, text))
    assert [fragment for fragment in fragments if fragment not in message] == [], message


def test_without_the_set_keys_an_override_reads_as_a_fixed_value() -> None:
    space = load_space("sentiment", SENTIMENT.defaults, "sentiment").with_overrides({"batch_size": 0})
    assert _error(space) == "space sentiment.toml: fixed.batch_size 0: expected an integer >= 1"


def test_an_image_size_of_16_from_set() -> None:
    space, sets = _with_sets(load_space("sentiment", SENTIMENT.defaults, "sentiment"), SENTIMENT, {"image_size": "16"})
    assert _error(space, sets) == "--set image_size=16: expected an integer >= 32"


def test_a_float_range_on_whole_steps_is_an_integer_range(tmp_path: Path) -> None:
    check_space(_space(tmp_path, "[search.epochs]\nlow = 2.0\nhigh = 8.0\nstep = 2.0\n"), SENTIMENT.limits)


def test_kernel_sizes_are_checked_item_by_item(tmp_path: Path) -> None:
    news = get_task("news")
    message = _error(_space(tmp_path, '[search.kernel_sizes]\nchoices = ["2,3", "0,3"]\n', news), task=news)
    assert "search.kernel_sizes choice '0,3'" in message and "a comma-separated list of integers >= 1" in message
    assert "'2,x'" in _error(_space(tmp_path, '[fixed]\nkernel_sizes = "2,x"\n', news), task=news)


def test_the_first_problem_is_a_set_value_then_the_file(tmp_path: Path) -> None:
    space, sets = _with_sets(_space(tmp_path, "[fixed]\ndropout = 2.0\n[search.lr]\nlow = -1.0\nhigh = 1.0\n"),
                             SENTIMENT, {"epochs": "0"})
    assert _error(space, sets).startswith("--set epochs=0:")
    assert "fixed.dropout 2.0" in _error(space)


def test_a_parameter_without_a_limit_is_not_checked(tmp_path: Path) -> None:
    check_space(_space(tmp_path, '[fixed]\ntext_model = "/any/local/folder"\n'), SENTIMENT.limits)
    check_space(_space(tmp_path, "[fixed]\nbatch_size = 0\n"), {})


# --- what must keep working -------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(builtin_spaces()))
def test_every_built_in_space_passes_its_tasks_limits(name: str) -> None:
    task = get_task(name.split("-")[0])  # news-finetune is a news space
    check_space(load_space(name, task.defaults, task.name), task.limits)


@pytest.mark.parametrize("name", TASKS)
def test_every_limit_names_a_parameter_and_every_default_passes(name: str) -> None:
    task = get_task(name)
    assert task.limits and set(task.limits) <= set(task.defaults)
    refused = {key: value for key, value in task.defaults.items() if key in task.limits and not task.limits[key].accepts(value)}
    assert refused == {}


@pytest.mark.parametrize(
    ("name", "flags"),
    [("sentiment", SENTIMENT_TINY + ["--set", "epochs=600", "--set", "batch_size=16", "--set", "freeze_backbones=false",
                                     "--set", "lr=1e-3", "--set", "modality=text", "--set", "text_model=/no/such/model"]),
     ("news", TINY_NEWS + ["--set", "layout=cnews"]),
     ("retrieval", RETRIEVAL_TINY + [f"{k}={v}" for k, v in RETRIEVAL_TRAINER_TINY.items()])],
)
def test_the_test_suites_set_values_pass(name: str, flags: list[str]) -> None:
    task = get_task(name)
    space, sets = _with_sets(load_space(task.default_space, task.defaults, name), task, _sets(flags))
    check_space(space, task.limits, sets)


# --- Limit on its own -------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("limit", "words"),
    [(POSITIVE_INT, "an integer >= 1"), (POSITIVE, "a number > 0"), (FRACTION, "a number in [0, 1)"),
     (Limit(low=0, high=1, low_open=True, high_open=True), "a number in (0, 1)"), (Limit(high=5, high_open=True), "a number < 5"),
     (Limit(), "a number"), (Limit.one_of("tiny", "bert-base"), "one of tiny, bert-base"), (BOOLEAN, "one of true, false"),
     (Limit(low=1, integer=True, listed=True), "a comma-separated list of integers >= 1")],
)
def test_a_limit_describes_itself_in_words(limit: Limit, words: str) -> None:
    assert limit.describe() == words


@pytest.mark.parametrize(
    ("limit", "good", "bad"),
    [(POSITIVE_INT, [1, 64, 3.0], [0, -1, 2.5, True, "8", float("inf")]),
     (POSITIVE, [1e-9, 3], [0, -1e-3, float("nan"), None]),
     (FRACTION, [0, 0.0, 0.99], [1, 1.0, -0.01]),
     (BOOLEAN, [True, False], [1, 0, "true"]),
     (Limit.one_of("high", "low"), ["high", "low"], ["medium", 1, None]),
     (Limit(low=1, integer=True, listed=True), ["2,3,4", "1", 3, [1, 2]], ["", "0,2", "2,x", "2.5", [0]])],
)
def test_a_limit_accepts_what_it_says(limit: Limit, good: list[Any], bad: list[Any]) -> None:
    assert [value for value in good if not limit.accepts(value)] == []
    assert [value for value in bad if limit.accepts(value)] == []


@pytest.mark.parametrize(
    "arguments",
    [{"low": 1, "high": 0}, {"low": 1, "high": 1, "high_open": True}, {"low_open": True}, {"choices": ()},
     {"choices": ("a",), "low": 0}, {"choices": ("a",), "integer": True}],
)
def test_a_limit_no_value_could_meet_is_refused(arguments: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Limit(**arguments)


# --- through the command line (passes once the driver calls check_space) ----------------------

def test_cli_refuses_a_bad_set_value_before_anything_is_written(tmp_path: Path, sentiment_dir: Path) -> None:
    store = tmp_path / "store"
    result = CliRunner().invoke(app, ["run", "sentiment", "--set", "batch_size=0", "--store-dir", str(store),
                                      "--data-dir", str(sentiment_dir), "--trials", "1", *SENTIMENT_TINY])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "batch_size" in lines[0] and "expected an integer >= 1" in lines[0]
    assert not store.exists() or not any(store.iterdir())

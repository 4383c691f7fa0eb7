from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from sweeplab.sweeps.space import SpaceError, builtin_spaces, cell_key, load_space
from sweeplab.trainers.sentiment import DEFAULTS


def test_documented_grid_has_exactly_the_24_cells_of_the_report() -> None:
    space = load_space("sentiment", DEFAULTS, "sentiment")
    cells = space.grid_cells()
    assert len(cells) == 24
    assert {(c["batch_size"], c["complexity"], c["lr"]) for c in cells} == {
        (b, c, lr) for b in (16, 32, 64, 128) for c in ("high", "low") for lr in (1e-4, 1e-5, 1e-6)
    }
    assert {c["epochs"] for c in cells} == {10}


def test_refine_space_walks_the_reports_second_stage() -> None:
    space = load_space("sentiment-refine", DEFAULTS, "sentiment")
    assert [c["lr"] for c in space.grid_cells()] == [8e-6, 9e-6, 1e-5, 1.1e-5, 1.2e-5]
    assert space.fixed["batch_size"] == 128 and space.fixed["complexity"] == "low"


def test_tpe_suggestions_stay_inside_the_documented_ranges() -> None:
    space = load_space("sentiment", DEFAULTS, "sentiment")
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    for _ in range(15):
        trial = study.ask()
        config = space.suggest(trial)
        assert config["batch_size"] in (16, 32, 64, 128)
        assert config["complexity"] in ("high", "low")
        assert 1e-6 <= config["lr"] <= 1e-4
        assert config["modality"] == "fusion"
        study.tell(trial, 0.5)


def test_builtin_spaces_are_listed() -> None:
    assert {"sentiment", "sentiment-refine"} <= set(builtin_spaces())


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[search.nonsense]\nchoices = [1, 2]\n', "unknown parameter \\[search.nonsense\\]"),
        ('[search.lr]\nlow = 1e-3\nhigh = 1e-4\n', "empty range"),
        ('[search.batch_size]\nchoices = []\n', "non-empty list"),
        ('[search.lr]\nlow = 0.0\nhigh = 1e-4\nlog = true\n', "log = true needs low > 0"),
        ('[search.lr]\nlow = 1e-6\nhigh = 1e-4\ngrid = [1e-2]\n', "outside"),
        ('[fixed]\nwhatever = 1\n', "unknown parameter \\[fixed.whatever\\]"),
        ('task = "news"\n', "not 'sentiment'"),
        ('[search.lr\n', "not valid TOML"),
    ],
)
def test_bad_space_files_name_the_file_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(SpaceError, match=message) as info:
        load_space(path, DEFAULTS, "sentiment")
    assert str(path) in str(info.value)


def test_grid_sampler_needs_a_grid_for_continuous_ranges(tmp_path: Path) -> None:
    space = load_space(_write(tmp_path, "[search.lr]\nlow = 1e-6\nhigh = 1e-4\n"), DEFAULTS, "sentiment")
    with pytest.raises(SpaceError, match="add grid"):
        space.grid()


def test_overrides_fix_a_searched_parameter() -> None:
    space = load_space("sentiment", DEFAULTS, "sentiment").with_overrides({"batch_size": 8})
    assert "batch_size" not in space.params and space.fixed["batch_size"] == 8
    assert len(space.grid_cells()) == 6


def test_missing_space_file_is_an_error() -> None:
    with pytest.raises(SpaceError, match="not found"):
        load_space("does/not/exist.toml", DEFAULTS, "sentiment")


def test_a_cell_is_the_same_cell_whether_its_numbers_are_ints_or_floats() -> None:
    assert cell_key({"lr": 1, "batch_size": 16}) == cell_key({"batch_size": 16.0, "lr": 1.0})
    assert cell_key({"lr": 1e-5}) != cell_key({"lr": 1e-6})
    assert cell_key({"complexity": "low"}) != cell_key({"complexity": "high"})

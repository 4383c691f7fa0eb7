from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from sweeplab.sweeps.space import SpaceError, builtin_spaces, cell_key, load_space
from sweeplab.trainers.news import DEFAULTS as NEWS_DEFAULTS
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


def test_tpe_searches_where_heads_on_frozen_features_learn() -> None:
    """The sampled ranges are for the default model (not the report's fine-tuning lr), with the
    regularisers of a probe searched too."""
    space = load_space("sentiment", DEFAULTS, "sentiment")
    assert (space.params["lr"].low, space.params["lr"].high) == (1e-5, 1e-2)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    seen = []
    for _ in range(15):
        trial = study.ask()
        config = space.suggest(trial)
        assert config["batch_size"] in (16, 32, 64, 128)
        assert config["complexity"] in ("high", "low")
        assert 1e-5 <= config["lr"] <= 1e-2
        assert 0.0 <= config["dropout"] <= 0.6 and 1e-6 <= config["weight_decay"] <= 0.1
        assert config["modality"] == "fusion"
        seen.append(config["lr"])
        study.tell(trial, 0.5)
    assert max(seen) > 1e-3 > 1e-4 > min(seen)  # both sides of the report's largest value


def test_grid_cells_outside_the_sampled_range_are_recorded_inside_their_distribution() -> None:
    space = load_space("sentiment", DEFAULTS, "sentiment").widened_to_grid()
    assert space.params["lr"].low == 1e-6 and space.params["lr"].high == 1e-2
    study = optuna.create_study()
    study.enqueue_trial({"lr": 1e-6, "batch_size": 16, "complexity": "low", "epochs": 10, "dropout": 0.3,
                         "weight_decay": 1e-4})
    trial = study.ask()
    assert space.suggest(trial)["lr"] == 1e-6
    assert trial.distributions["lr"].low == 1e-6


NEWS_LIKE = """
[search.model]
choices = ["textcnn", "fasttext"]

[search.lr]
low = 1e-4
high = 1e-2
log = true
grid = [1e-3, 3e-3]

[search.filters]
when = { model = "textcnn" }
choices = [64, 128]

[search.ngrams]
when = { model = ["fasttext"] }
choices = [2, 3]
grid = [2]
"""


def test_a_conditional_parameter_is_sampled_only_with_its_family(tmp_path: Path) -> None:
    space = load_space(_write(tmp_path, NEWS_LIKE), NEWS_DEFAULTS, "news")
    assert space.conditional
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    families = set()
    for _ in range(20):
        trial = study.ask()
        config = space.suggest(trial)
        families.add(config["model"])
        if config["model"] == "textcnn":
            assert "filters" in trial.params and "ngrams" not in trial.params
        else:
            assert "ngrams" in trial.params and "filters" not in trial.params
        study.tell(trial, 0.5)
    assert families == {"textcnn", "fasttext"}


def test_grid_crosses_a_conditional_parameter_with_its_family_only(tmp_path: Path) -> None:
    cells = load_space(_write(tmp_path, NEWS_LIKE), NEWS_DEFAULTS, "news").grid_cells()
    # textcnn: 2 lr x 2 filters; fasttext: 2 lr x 1 ngrams
    assert len(cells) == 6
    assert all(("filters" in c) == (c["model"] == "textcnn") and ("ngrams" in c) == (c["model"] == "fasttext") for c in cells)
    assert len({cell_key(c) for c in cells}) == 6


def test_the_builtin_news_space_searches_three_families() -> None:
    space = load_space("news", NEWS_DEFAULTS, "news")
    assert set(space.params["model"].choices) == {"textcnn", "fasttext", "scratch"}
    assert dict(space.params["kernel_sizes"].when) == {"model": ("textcnn",)}
    assert {c["model"] for c in space.grid_cells()} == {"textcnn", "fasttext", "scratch"}


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
        ('[search.epochs]\nlow = 2\nhigh = 8\ngrid = [2.5]\n', "must be an integer"),
        ('[search.lr]\nlow = 1e-5\nhigh = 1e-2\nlog = true\ngrid = [0.0]\n', "must be > 0 for a log = true range"),
        ('[search.batch_size]\nchoices = [16, 32]\ngrid = [64]\n', "grid must be a non-empty list of its choices"),
        ('[search.dropout]\nwhen = { complexity = "low" }\nlow = 0.0\nhigh = 0.5\n', "neither searched above it nor fixed"),
        ('[search.complexity]\nchoices = ["high", "low"]\n[search.dropout]\nwhen = { complexity = "mid" }\n'
         'low = 0.0\nhigh = 0.5\n', "is not one of its choices"),
        ('[search.dropout]\nwhen = "textcnn"\nlow = 0.0\nhigh = 0.5\n', "when must be a table"),
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


def test_a_folder_named_like_a_builtin_space_does_not_hide_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A data folder called ``sentiment/`` in the working directory: the name still means the
    built-in space; a file without a suffix is read as a file; a folder that is no space says so."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sentiment").mkdir()
    assert load_space("sentiment", DEFAULTS, "sentiment").path == builtin_spaces()["sentiment"]
    (tmp_path / "mine").write_text("[fixed]\nepochs = 3\n", encoding="utf-8")
    assert load_space("mine", DEFAULTS, "sentiment").fixed == {"epochs": 3}
    (tmp_path / "data").mkdir()
    with pytest.raises(SpaceError, match="data: a folder, not a space file, and not a built-in space"):
        load_space("data", DEFAULTS, "sentiment")


def test_a_cell_is_the_same_cell_whether_its_numbers_are_ints_or_floats() -> None:
    assert cell_key({"lr": 1, "batch_size": 16}) == cell_key({"batch_size": 16.0, "lr": 1.0})
    assert cell_key({"lr": 1e-5}) != cell_key({"lr": 1e-6})
    assert cell_key({"complexity": "low"}) != cell_key({"complexity": "high"})


def test_an_unconditional_parameter_reads_as_it_did_before_conditions_existed() -> None:
    """A study records its space's parameters; one made before conditions existed must resume."""
    space = load_space("sentiment-refine", DEFAULTS, "sentiment")
    assert space.params["lr"].signature() == (
        "Param(name='lr', kind='categorical', choices=(8e-06, 9e-06, 1e-05, 1.1e-05, 1.2e-05), low=None, high=None, "
        "log=False, step=None, grid=())")


def test_a_condition_changes_the_signature(tmp_path: Path) -> None:
    space = load_space(_write(tmp_path, NEWS_LIKE), NEWS_DEFAULTS, "news")
    assert "when (('model', ('textcnn',)),)" in space.params["filters"].signature()


class _Reads(dict):
    """A config that remembers which keys were read."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> object:
        self.read.add(key)
        return super().__getitem__(key)


FAMILY_PARAMS = {"hidden_size", "layers", "heads", "embedding_dim", "filters", "kernel_sizes", "ngrams", "buckets"}


@pytest.mark.parametrize("model, used", [
    ("textcnn", {"embedding_dim", "filters", "kernel_sizes"}),
    ("fasttext", {"embedding_dim", "ngrams", "buckets"}),
    ("scratch", {"hidden_size", "layers", "heads"}),
    ("bert-base-chinese", set()),  # a pretrained checkpoint brings its own shape
])
def test_a_news_trial_records_the_fixed_parameters_of_its_own_family_only(model: str, used: set[str]) -> None:
    space = load_space("news", NEWS_DEFAULTS, "news")
    config = {**NEWS_DEFAULTS, **space.fixed, "model": model}
    inactive = space.inactive(config)
    assert FAMILY_PARAMS - inactive == used
    assert "lr" not in inactive and "dropout" not in inactive and "model" not in inactive


@pytest.mark.parametrize("model", ["textcnn", "fasttext", "scratch", "bert-base-chinese"])
def test_the_news_trainer_reads_exactly_the_family_parameters_a_trial_records(model: str,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """USED_WHEN is the truth of news._build_model: it reads no parameter a trial leaves out, and
    every family parameter a trial records."""
    import transformers

    from sweeplab.trainers.news import _build_model

    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", lambda *a, **k: "pretrained")
    config = _Reads({**NEWS_DEFAULTS, "model": model, "hidden_size": 32, "heads": 2, "layers": 1, "buckets": 64})
    _build_model(config, num_labels=3, vocab_size=40)
    space = load_space("news", NEWS_DEFAULTS, "news")
    assert config.read & FAMILY_PARAMS == FAMILY_PARAMS - space.inactive(config)


@pytest.mark.parametrize("model", ["scratch", "OFA-Sys/chinese-clip-vit-base-patch16"])
def test_the_retrieval_trainer_reads_exactly_the_tower_parameters_a_trial_records(model: str,
                                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    from sweeplab.trainers.retrieval import _build_model
    from sweeplab.trainers.settings.retrieval import DEFAULTS as RETRIEVAL_DEFAULTS, USED_WHEN

    monkeypatch.setattr(transformers.ChineseCLIPModel, "from_pretrained", lambda *a, **k: "pretrained")
    config = _Reads({**RETRIEVAL_DEFAULTS, "model": model, "hidden_size": 32, "heads": 2, "text_layers": 1,
                     "vision_layers": 1, "image_size": 32, "patch_size": 8})
    _build_model(config, vocab_size=40)
    inactive = load_space("retrieval", RETRIEVAL_DEFAULTS, "retrieval").inactive(config)
    assert config.read & set(USED_WHEN) == set(USED_WHEN) - inactive
    assert (inactive == set(USED_WHEN)) == (model != "scratch")


def test_a_text_only_sentiment_trial_does_not_record_the_image_backbone() -> None:
    space = load_space("sentiment", DEFAULTS, "sentiment")
    assert space.inactive({**DEFAULTS, "modality": "text"}) == {"image_model", "image_weights"}
    assert space.inactive({**DEFAULTS, "modality": "image"}) == {"text_model", "text_pooling", "max_length"}
    assert space.inactive({**DEFAULTS, "modality": "fusion"}) == set()


def test_a_parameter_the_space_searches_unconditionally_or_another_tasks_is_kept(tmp_path: Path) -> None:
    searched = load_space(_write(tmp_path, 'task = "news"\n[search.heads]\nchoices = [2, 4]\n'), NEWS_DEFAULTS, "news")
    assert "heads" not in searched.inactive({**NEWS_DEFAULTS, "model": "textcnn", "heads": 2})
    assert "hidden_size" in searched.inactive({**NEWS_DEFAULTS, "model": "textcnn", "heads": 2})
    own = load_space(_write(tmp_path, '[search.lr]\nlow = 0.1\nhigh = 1.0\n'), None, "my_trainer.py:fit")
    assert own.inactive({"model": "textcnn", "heads": 4, "lr": 0.5}) == set()  # a function's parameters are its own

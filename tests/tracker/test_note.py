"""The sweep's description on its parent run: markdown that keeps its table whole."""

from __future__ import annotations

from sweeplab.tracker.note import comparison_link, sweep_note, sweeps_link
from sweeplab.tracker.query import TrialRow


def _row(trial: int, value: float, params: dict[str, str]) -> TrialRow:
    return TrialRow(run_id=f"run{trial}", run_name=f"trial-{trial:03d}", experiment="e", study="s", trial=trial,
                    state="complete", metric="best_val_accuracy", value=value, params=params,
                    summary={"best_epoch": 3.0, "overfit_epoch": 5.0}, checkpoint=None, predictions=None, overfit="UP")


def test_the_table_has_one_row_per_trial_whatever_the_parameter_values() -> None:
    rows = [_row(4, 0.91, {"model": "a|b", "note": "*bold* _it_", "seed": "0", "overfit_up_s": "3"}),
            _row(1, 0.8, {"lr": "0.0051763428916", "wd": "1e-05"})]
    note = sweep_note({"task": "t (x|y)"}, {"complete": 2, "failed": 1}, rows, "7", "epoch",
                      comparison_link("7", "s", "best_val_accuracy", "maximize"))
    table = [line for line in note.splitlines() if line.startswith("| ")]
    assert len(table) == 3 and all(line.count(" | ") == table[0].count(" | ") for line in table)  # header + 2 rows
    assert "[trial 4](#/experiments/7/runs/run4?workflowType=machine_learning)" in table[1] and "a\\|b" in table[1] and "\\*bold\\*" in table[1]
    assert "seed" not in table[1] and "overfit_up_s" not in table[1]  # the sweep's settings, not the trial's
    assert "lr=0.005176, wd=1e\\-05" in table[2]  # as people read them; MLflow's params keep every digit
    assert "**trials**: 2 complete, 1 failed" in note and "compareRunsMode=CHART" in note


def test_the_comparison_link_orders_a_minimised_metric_ascending() -> None:
    assert "orderByAsc=true" in comparison_link("1", "s", "best_val_loss", "minimize")
    assert "orderByAsc=false" in comparison_link("1", "s", "best_val_accuracy", "maximize")


def _description(task_name: str, space_name: str, overrides: dict | None = None) -> str:
    from sweeplab.sweeps.closing import sweep_settings
    from sweeplab.sweeps.options import SweepOptions
    from sweeplab.sweeps.space import load_space
    from sweeplab.tasks import get_task

    task = get_task(task_name)
    space = load_space(space_name, task.defaults, task.name).with_overrides(overrides or {})
    settings = sweep_settings(task, space, SweepOptions.of(task.name), None)
    return sweep_note(settings, {"complete": 1}, [], "1")


def test_the_description_names_the_models_in_the_resolved_config() -> None:
    default = _description("sentiment", "sentiment")
    assert ("**model**: text\\_model=minilm, image\\_model=efficientnet\\-lite0, modality=fusion, "
            "freeze\\_backbones=true") in default
    assert "BERT" not in default and "ResNet" not in default  # the task's fixed summary is not the model
    assert "**task**: sentiment\n" in default
    chosen = _description("sentiment", "sentiment", {"text_model": "tiny", "image_model": "resnet50", "modality": "text"})
    assert "text\\_model=tiny, modality=text" in chosen and "resnet50" not in chosen  # a text-only sweep reads no image
    assert "**model**: model ∈ \\{fasttext, textcnn, scratch\\}" in _description("news", "news")
    assert "**model**: model=textcnn\n" in _description("news", "news", {"model": "textcnn"})
    assert "**model**: model=bert\\-base\\-chinese\n" in _description("news", "news-finetune")
    assert "**model**: model=scratch, freeze\\_text=false, freeze\\_vision=false" in _description("retrieval", "retrieval")


def test_a_functions_description_keeps_its_own_summary(tmp_path) -> None:
    from sweeplab.core import Task
    from sweeplab.sweeps.closing import sweep_settings
    from sweeplab.sweeps.options import SweepOptions
    from sweeplab.sweeps.space import load_space

    (tmp_path / "s.toml").write_text("[search.lr]\nlow = 0.1\nhigh = 1.0\n[fixed]\nmodel = \"mlp\"\n", encoding="utf-8")
    task = Task(name="f.py:fit", summary="my MLP", metric="val_loss", direction="minimize", defaults={}, default_space="",
                sample_data=None, load=None, prepare=None, fit=None, open=True)  # type: ignore[arg-type]
    settings = sweep_settings(task, load_space(tmp_path / "s.toml", None, task.name), SweepOptions.of(task.name), None)
    assert settings["task"] == "f.py:fit (my MLP)" and settings["model"] == "model=mlp"


def test_the_sweeps_page_is_the_model_training_view_of_their_parent_runs() -> None:
    """The first address ``sweep ui`` prints: the sweeps of one experiment, of several, or the
    experiments when there is none; each in the model-training view (the hash route's query)."""
    from urllib.parse import parse_qs, unquote

    one = sweeps_link(["3", "3"])
    route, _, query = one.partition("?")
    assert route == "#/experiments/3/runs"
    assert parse_qs(query) == {"workflowType": ["machine_learning"], "searchFilter": ["tags.`sweeplab.role` = 'sweep'"]}
    several = sweeps_link(["12", "3"])
    assert several.startswith("#/compare-experiments/s?experiments=")
    assert unquote(several.split("experiments=", 1)[1].split("&", 1)[0]) == '["12","3"]'
    assert "workflowType=machine_learning" in several
    assert sweeps_link([]) == "#/experiments?workflowType=machine_learning"

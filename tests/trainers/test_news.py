"""The news trainer: the Chinese vocabulary, batch framing, step-indexed rounds, checkpoints."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch

from sweeplab.core import TrialEnv
from sweeplab.datasets.cache import PrepCache
from sweeplab.trainers.backbones import CHINESE_VOCAB_SIZE, chinese_tokenizer
from sweeplab.trainers.loop import fit
from sweeplab.trainers.news import TASK, _evaluate, _NewsTrainer, _tokens
from sweeplab.trainers.tokens import TokenisedTexts, batch_inputs, load_tokenizer_for

FIXTURES = Path(__file__).parent.parent / "fixtures" / "news"
CJK = re.compile(r"[\u4e00-\u9fff]")
TINY_MODEL = {"hidden_size": 32, "layers": 1, "heads": 2, "eval_batch_size": 64}


def _env(tmp_path: Path, seed: int = 0) -> TrialEnv:
    return TrialEnv(device=torch.device("cpu"), precision="fp32", cache=PrepCache(tmp_path / "cache"), seed=0,
                    trial_seed=seed, early_stop=None)


def test_vocabulary_is_bert_base_chinese_one_token_per_character() -> None:
    tokenizer = chinese_tokenizer()
    assert len(tokenizer) == CHINESE_VOCAB_SIZE
    assert tokenizer.tokenize("体育新闻：中国队获胜") == list("体育新闻：中国队获胜")
    lines = [line for p in sorted(FIXTURES.glob("*.txt")) for line in p.read_text(encoding="utf-8").splitlines()]
    chars = {ch for line in lines for ch in CJK.findall(line)}
    assert len(chars) > 500
    unknown = [ch for ch in chars if tokenizer.tokenize(ch) != [ch]]
    assert unknown == []
    others = {ch for line in lines for ch in line if not ch.isspace() and tokenizer.tokenize(ch) == [tokenizer.unk_token]}
    assert others <= set("“”‘’—…")  # the only unknowns: bert-base-chinese lacks curly quotes, — and …


def test_batch_is_cls_text_sep_cut_to_max_length_and_padded_to_the_longest() -> None:
    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 0, 0, 0], [5, 0, 0, 0, 0]], dtype=torch.int32)
    split = TokenisedTexts(ids, torch.tensor([5, 2, 1], dtype=torch.int32))
    out = batch_inputs(split, torch.tensor([1, 2]), max_length=16, cls=101, sep=102, pad=0)
    assert out["input_ids"].tolist() == [[101, 5, 6, 102], [101, 5, 102, 0]]  # width 2 + 2, not 16
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    out = batch_inputs(split, torch.tensor([0, 2]), max_length=5, cls=101, sep=102, pad=0)
    assert out["input_ids"].tolist() == [[101, 5, 6, 7, 102], [101, 5, 102, 0, 0]]
    assert out["attention_mask"].sum(1).tolist() == [5, 3]


class _Steps:
    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_start(self, rounds: int) -> None:
        self.rounds = rounds

    def on_eval(self, step: int, metrics: Mapping[str, float]) -> bool:
        self.steps.append(step)
        return False


def _loaded(tmp_path: Path):  # noqa: ANN202 - a Loaded of the packaged sample
    return TASK.load(TASK.sample_data, 0, 0.2, TASK.defaults)


@pytest.mark.parametrize(("eval_every", "expected"), [(5, [5, 10, 15, 16]), (0, [8, 16])])
def test_rounds_are_blocks_of_optimizer_steps_or_epochs(tmp_path: Path, eval_every: int, expected: list[int]) -> None:
    loaded = _loaded(tmp_path)
    config = {**TASK.defaults, **TINY_MODEL, "batch_size": 256, "epochs": 2, "eval_every": eval_every}
    trainer = _NewsTrainer(loaded, config, _env(tmp_path))  # 2,000 titles / 256 = 8 steps an epoch
    reporter = _Steps()
    result = fit(trainer, trainer.rounds, reporter, "val_accuracy")
    assert reporter.rounds == len(expected) and reporter.steps == expected
    assert [p["step"] for p in result.history] == expected
    assert {"train_loss", "val_loss", "val_accuracy", "val_f1_macro", "val_roc_auc", "lr"} <= set(result.history[0])
    assert result.history[-1]["lr"] == pytest.approx(0.0)  # the linear schedule ends at 0


def test_checkpoint_folder_loads_with_transformers_and_predicts_as_the_kept_state(tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    loaded = _loaded(tmp_path)
    config = {**TASK.defaults, **TINY_MODEL, "batch_size": 128, "epochs": 1, "lr": 3e-3}
    env = _env(tmp_path)
    trainer = _NewsTrainer(loaded, config, env)
    result = fit(trainer, trainer.rounds, _Steps(), "val_accuracy")
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    TASK.save_checkpoint(loaded, config, result.state, folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    assert model.config.id2label[7] == "sports"
    evaluation = TASK.evaluate_test(loaded, config, folder, env)
    assert set(evaluation.metrics) == {"test_loss", "test_accuracy", "test_f1_macro", "test_roc_auc"}
    assert len(evaluation.outputs["y_true"]) == 500
    trainer.model.load_state_dict(result.state)  # the kept state, scored without the checkpoint
    direct = _evaluate(trainer.model, _tokens(loaded, env, *load_tokenizer_for("scratch"))["test"], trainer.frame, config, env, "test_")
    assert direct.metrics == pytest.approx(evaluation.metrics)


def test_prepare_notes_unknown_tokens_and_cut_texts(tmp_path: Path) -> None:
    loaded = _loaded(tmp_path)
    TASK.prepare(loaded, {**TASK.defaults, "max_length": 12}, _env(tmp_path))
    note = loaded.reports[0].notes[-1]
    assert re.search(r"\d+ of \d+ training tokens are \[UNK\] \(0\.\d\d%\); most often ", note)
    cut = int(re.search(r"(\d+) of 2000 training texts are longer than max_length 12", note).group(1))
    assert 1000 < cut < 2000


def test_any_local_checkpoint_folder_is_fine_tuned(tmp_path: Path) -> None:
    from transformers import BertConfig, BertForSequenceClassification

    folder = tmp_path / "my-bert"
    config = BertConfig(vocab_size=CHINESE_VOCAB_SIZE, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, num_labels=3)
    BertForSequenceClassification(config).save_pretrained(folder)  # a head of the wrong size: replaced
    chinese_tokenizer().save_pretrained(folder)
    loaded = _loaded(tmp_path)
    trial = {**TASK.defaults, "model": str(folder), "batch_size": 256, "epochs": 1}
    trainer = _NewsTrainer(loaded, trial, _env(tmp_path))
    assert trainer.model.config.num_labels == 10 and trainer.model.config.hidden_size == 32
    result = fit(trainer, trainer.rounds, _Steps(), "val_accuracy")
    assert [p["step"] for p in result.history] == [8]


def test_a_model_that_cannot_be_loaded_is_a_clear_error(tmp_path: Path) -> None:
    from sweeplab.trainers.backbones import BackboneError

    with pytest.raises(BackboneError, match="no tokenizer can be loaded offline.*model=scratch"):
        _NewsTrainer(_loaded(tmp_path), {**TASK.defaults, "model": str(tmp_path / "nothing-here")}, _env(tmp_path))

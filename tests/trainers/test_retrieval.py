"""Retrieval: recall@K on hand-made similarities, the trainer on tiny data, its checkpoint."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest
import torch

from sweeplab.core import TrialEnv
from sweeplab.datasets.cache import PrepCache
from sweeplab.datasets.shapes import write_shapes
from sweeplab.trainers.loop import fit
from sweeplab.trainers.metrics import recall_at_k
from sweeplab.trainers.retrieval import TASK, _RetrievalTrainer, retrieval_metrics

TINY = {"hidden_size": 32, "heads": 2, "text_layers": 1, "vision_layers": 1, "projection_dim": 16, "image_size": 32,
        "patch_size": 8, "batch_size": 32, "eval_batch_size": 32, "warmup_steps": 2, "lr": 1e-3, "epochs": 2}


def test_recall_at_k_on_a_hand_made_similarity_matrix() -> None:
    similarity = np.array([
        [0.9, 0.1, 0.5, 0.0],   # target 0 ranks 1st
        [0.2, 0.3, 0.8, 0.1],   # target 0 ranks 3rd
        [0.1, 0.7, 0.6, 0.2],   # targets {2, 3}: best is 2, ranked 2nd
        [0.4, 0.4, 0.4, 0.4],   # ties count against the query: ranked 4th
    ])
    targets = [[0], [0], [2, 3], [3]]
    assert recall_at_k(similarity, targets, (1, 2, 3, 4)) == {1: 0.25, 2: 0.5, 3: 0.75, 4: 1.0}
    collapsed = np.zeros((5, 5))  # a model that scores everything alike is not perfect
    assert recall_at_k(collapsed, [[i] for i in range(5)], (1,)) == {1: 0.0}
    assert np.isnan(recall_at_k(np.full((2, 2), np.nan), [[0], [1]], (1,))[1])
    assert recall_at_k(similarity, [[0], [], [], []], (1,)) == {1: 1.0}  # queries without targets are left out


def test_retrieval_metrics_go_both_ways() -> None:
    similarity = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.6]])  # 3 texts x 2 images
    targets = [[0], [1], [1]]
    texts_of = [[0], [1, 2]]
    metrics = retrieval_metrics(similarity, targets, texts_of, "val_")
    assert metrics["val_t2i_r1"] == pytest.approx(2 / 3)  # text 1 prefers image 0
    assert metrics["val_i2t_r1"] == 1.0  # image 1's best text is text 2, which names it
    assert metrics["val_recall_mean"] == pytest.approx(np.mean([2 / 3, 1.0, 1.0]))


def _env(tmp_path: Path) -> TrialEnv:
    return TrialEnv(device=torch.device("cpu"), precision="fp32", cache=PrepCache(tmp_path / "cache"), seed=0,
                    trial_seed=0, early_stop=None, metric="val_recall_mean")


def _shapes(tmp_path: Path) -> Path:
    folder = write_shapes(tmp_path / "shapes", {"train": 64, "valid": 24, "test": 24}, seed=1, image_size=32)
    with (folder / "valid_imgs.tsv").open("a", encoding="utf-8") as out:
        out.write(f"77\t{base64.b64encode(b'this is not a picture').decode()}\n")
    with (folder / "valid_texts.jsonl").open("a", encoding="utf-8") as out:
        out.write('{"text_id": 7, "text": "坏图", "image_ids": [77]}\n')
    return folder


class _Silent:
    def on_start(self, rounds: int) -> None:
        self.rounds = rounds

    def on_eval(self, step: int, metrics: object) -> bool:
        return False


def test_trainer_curves_checkpoint_and_undecodable_image(tmp_path: Path) -> None:
    from transformers import ChineseCLIPModel

    loaded = TASK.load(_shapes(tmp_path), 0, 0.2, TASK.defaults)
    config = {**TASK.defaults, **TINY}
    env = _env(tmp_path)
    TASK.prepare(loaded, config, env)
    valid_report = loaded.payload.image_report("valid")
    assert dict(valid_report.counts) == {"image does not decode": 1} and valid_report.first["image does not decode"] == ["image_id 77"]
    trainer = _RetrievalTrainer(loaded, config, env)
    assert len(trainer.valid.pixels) == 24  # the undecodable image is left out, with the text naming only it
    assert len(trainer.valid.targets) == len(loaded.payload.valid.texts) - 1
    result = fit(trainer, 2, _Silent(), "val_recall_mean")
    keys = {"val_loss", "val_t2i_r1", "val_t2i_r5", "val_t2i_r10", "val_recall_mean", "val_i2t_r1", "val_i2t_mean",
            "train_loss", "lr", "temperature"}
    assert keys <= set(result.history[0]) and [p["step"] for p in result.history] == [1, 2]
    assert all(0 <= p["val_recall_mean"] <= 1 for p in result.history)
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    TASK.save_checkpoint(loaded, config, result.state, folder)
    assert ChineseCLIPModel.from_pretrained(folder).config.projection_dim == 16
    test = TASK.evaluate_test(loaded, config, folder, env)
    assert {"test_recall_mean", "test_t2i_r1", "test_i2t_r10", "test_loss"} <= set(test.metrics)
    trainer.model.load_state_dict(result.state)  # the kept state, scored directly, agrees with the checkpoint
    from sweeplab.trainers.retrieval import _evaluate, _splits

    direct = _evaluate(trainer.model, _splits(loaded, env, config)[0]["test"], trainer.frame, config, env, "test_")
    assert direct.metrics == pytest.approx(test.metrics)


def test_frozen_towers_do_not_move(tmp_path: Path) -> None:
    loaded = TASK.load(_shapes(tmp_path), 0, 0.2, TASK.defaults)
    config = {**TASK.defaults, **TINY, "epochs": 1, "freeze_text": True}
    trainer = _RetrievalTrainer(loaded, config, _env(tmp_path))
    before_text = trainer.model.text_projection.weight.detach().clone()
    before_image = trainer.model.visual_projection.weight.detach().clone()
    trainer.train_round()
    assert torch.equal(trainer.model.text_projection.weight, before_text)
    assert not torch.equal(trainer.model.visual_projection.weight, before_image)


def test_a_tiny_model_learns_the_generated_set_well_above_chance(tmp_path: Path) -> None:
    data = write_shapes(tmp_path / "learn", {"train": 400, "valid": 120}, seed=2, image_size=32)
    loaded = TASK.load(data, 0, 0.2, TASK.defaults)
    config = {**TASK.defaults, **TINY, "hidden_size": 64, "projection_dim": 32, "warmup_steps": 5, "epochs": 20}
    result = fit(_RetrievalTrainer(loaded, config, _env(tmp_path)), 20, _Silent(), "val_recall_mean")
    valid = loaded.payload.valid
    n = len(valid.image_ids)
    chance = np.mean([np.mean([min(1.0, len(t) * k / n) for k in (1, 5, 10)]) for t in valid.targets])
    best = max(p["val_recall_mean"] for p in result.history)
    assert best > 2 * chance, (best, chance)
    assert result.history[0]["val_loss"] > min(p["val_loss"] for p in result.history)

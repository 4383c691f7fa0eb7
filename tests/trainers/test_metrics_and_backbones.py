from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sweeplab.trainers.backbones import BackboneError, load_image_backbone, load_text_backbone
from sweeplab.trainers.metrics import classification_metrics
from sweeplab.trainers.sentiment import FusionClassifier, widths


def test_metrics_match_their_definitions() -> None:
    y = np.array([0, 1, 2, 2])
    prob = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.5, 0.3, 0.2]])
    m = classification_metrics(y, prob)
    assert m["val_accuracy"] == 0.75
    assert m["val_loss"] == pytest.approx(-np.mean(np.log([0.8, 0.7, 0.7, 0.2])))
    # per-class F1: class 0 (p=1/2, r=1) 2/3, class 1 1.0, class 2 (p=1, r=1/2) 2/3
    assert m["val_f1_macro"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)
    assert 0.0 < m["val_roc_auc"] <= 1.0


def test_auc_is_nan_when_a_class_is_missing() -> None:
    m = classification_metrics(np.array([0, 0]), np.array([[0.9, 0.05, 0.05], [0.6, 0.2, 0.2]]))
    assert math.isnan(m["val_roc_auc"])


def test_tiny_text_preset_uses_its_character_vocabulary() -> None:
    backbone = load_text_backbone("tiny")
    assert len(backbone.tokenizer) == len(backbone.tokenizer.vocab) > 300
    ids = backbone.tokenizer("good day")["input_ids"]
    assert backbone.tokenizer.unk_token_id not in ids
    out = backbone.encode(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
    assert out.shape == (1, backbone.hidden_size)


def test_unknown_backbones_are_clear_errors() -> None:
    with pytest.raises(BackboneError, match="not a torchvision model"):
        load_image_backbone("no-such-net")
    with pytest.raises(BackboneError, match="cannot be loaded offline"):
        load_text_backbone("/no/such/model/dir")


def test_torchvision_backbone_with_local_weights(tmp_path) -> None:
    import torchvision

    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    backbone = load_image_backbone("resnet18", path)
    assert backbone.feature_dim == 512
    assert backbone.model(torch.zeros(2, 3, 64, 64)).shape == (2, 512)


def test_fusion_heads_follow_the_report_and_low_halves_them() -> None:
    assert widths("high") == (256, 256, 128) and widths("low") == (128, 128, 64)
    model = FusionClassifier(768, 2048, "high", 0.0)
    assert (model.text_proj.in_features, model.text_proj.out_features) == (768, 256)
    assert (model.image_proj.in_features, model.image_proj.out_features) == (2048, 256)
    assert (model.fuse.in_features, model.fuse.out_features, model.out.out_features) == (512, 128, 3)
    low = FusionClassifier(768, 2048, "low", 0.0)
    assert (low.fuse.in_features, low.fuse.out_features) == (256, 64)
    text_only = FusionClassifier(768, None, "high", 0.0)
    assert text_only.image_proj is None and text_only(torch.zeros(2, 768), None).shape == (2, 3)

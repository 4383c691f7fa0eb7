"""The ``sentiment`` task: text + image sentiment (positive / neutral / negative), after the lab
report in ``shared/seeds/003``.

Model (the report's): text ``[CLS]`` -> Linear(hidden, 256); image backbone -> Linear(features,
256); concatenation (512) -> Linear(512, 128) -> Linear(128, 3), with ReLU and dropout between.
``complexity = "low"`` halves every width (128, 128, 64). ``modality`` selects the fusion model or
the text-only / image-only variants the report compares. AdamW with weight decay, random
horizontal flip and rotation of the images, and ReduceLROnPlateau on the validation loss, as in
the report.

Two ways to train, chosen by ``freeze_backbones``:

* frozen (the offline default): the backbones run once per sweep over the whole data set and
  their features are cached (:class:`~sweeplab.datasets.cache.PrepCache`); every trial trains the
  heads on those features, which takes seconds on a CPU. Image augmentation does not apply.
* fine-tuned (the report's setting, for a GPU): the backbones train with the heads; tokenised
  texts and decoded, resized images are still prepared once per sweep and shared.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.transforms import v2

from sweeplab.core import Evaluation, FitResult, Loaded, Reporter, Task, TrialEnv
from sweeplab.datasets.cache import fingerprint_files
from sweeplab.datasets.images import decode_images
from sweeplab.datasets.errors import DataError
from sweeplab.datasets.sentiment import LABELS, SentimentData, read_sentiment
from sweeplab.datasets.splits import majority_share, stratified_split
from sweeplab.trainers.backbones import ImageBackbone, TextBackbone, load_image_backbone, load_text_backbone
from sweeplab.trainers.device import autocast
from sweeplab.trainers.loop import fit_and_close, seed_everything
from sweeplab.trainers.metrics import classification_metrics
from sweeplab.trainers.model_trainer import ModelTrainer, class_probabilities, plateau_schedule
from sweeplab.trainers.settings.sentiment import DEFAULTS, LIMITS, MODALITIES  # torch-free: `sweep run` checks --set against them first
from sweeplab.trainers.transfer import to_device, trimmed_to_device

__all__ = ["TASK", "FusionClassifier", "widths"]


def widths(complexity: str) -> tuple[int, int, int]:
    """(text branch, image branch, fusion layer) widths: the report's (256, 256, 128) for
    ``high``; every width halved for ``low``."""
    if complexity == "high":
        return 256, 256, 128
    if complexity == "low":
        return 128, 128, 64
    raise DataError(f"complexity must be 'high' or 'low', got {complexity!r}")


class FusionClassifier(nn.Module):
    """The report's heads over text and/or image vectors (backbone outputs)."""

    def __init__(self, text_dim: int | None, image_dim: int | None, complexity: str, dropout: float,
                 num_classes: int = len(LABELS)) -> None:
        super().__init__()
        text_width, image_width, fused = widths(complexity)
        self.text_proj = nn.Linear(text_dim, text_width) if text_dim else None
        self.image_proj = nn.Linear(image_dim, image_width) if image_dim else None
        joined = (text_width if text_dim else 0) + (image_width if image_dim else 0)
        self.fuse = nn.Linear(joined, fused)
        self.out = nn.Linear(fused, num_classes)
        self.drop = nn.Dropout(dropout)

    def forward(self, text: torch.Tensor | None, image: torch.Tensor | None) -> torch.Tensor:
        parts = []
        if self.text_proj is not None:
            parts.append(self.drop(torch.relu(self.text_proj(text))))
        if self.image_proj is not None:
            parts.append(self.drop(torch.relu(self.image_proj(image))))
        fused = self.drop(torch.relu(self.fuse(torch.cat(parts, dim=-1))))
        return self.out(fused)


@dataclass
class _Split:
    """Rows of one split (indices into the prepared arrays, which hold the labelled rows and then
    the unlabelled ones), with their labels (``None`` when unlabelled) and guids."""

    rows: torch.Tensor
    labels: torch.Tensor | None
    guids: list[str]


@dataclass(frozen=True)
class _Payload:
    """The read data and its seeded, stratified train/validation split (indices into
    ``data.labelled``), fixed for the whole sweep so that trials are comparable."""

    data: SentimentData
    train: list[int]
    val: list[int]


def _split(rows: list[int], data: SentimentData) -> _Split:
    """The split of ``rows`` (labelled rows first, then unlabelled ones)."""
    n_labelled = len(data.labelled)
    examples = [data.labelled[r] if r < n_labelled else data.unlabelled[r - n_labelled] for r in rows]
    labels = [e.label for e in examples]
    return _Split(rows=torch.tensor(rows, dtype=torch.long),
                  labels=None if None in labels else torch.tensor(labels, dtype=torch.long), guids=[e.guid for e in examples])


def _load(data_dir: Path, seed: int, val_fraction: float = 0.2, settings: Mapping[str, Any] | None = None) -> Loaded:
    data = read_sentiment(data_dir)
    train, val = stratified_split([e.label for e in data.labelled], val_fraction, seed)
    images = [e.image for e in data.labelled + data.unlabelled]
    fingerprint = fingerprint_files(images + [p.with_suffix(".txt") for p in images])
    labels = [e.label for e in data.labelled]
    return Loaded(payload=_Payload(data, train, val), reports=data.reports, fingerprint=fingerprint, class_names=LABELS,
                  majority=majority_share([labels[i] for i in val]))


def _prepare_pixels(loaded: Loaded, env: TrialEnv, size: int) -> dict[str, Any]:
    """Decoded, resized images of every row (labelled then unlabelled), once per sweep."""
    data: SentimentData = loaded.payload.data
    paths = [e.image for e in data.labelled + data.unlabelled]

    def build() -> dict[str, Any]:
        pixels, failed = decode_images(paths, size, env.cache.advance)
        return {"pixels": pixels, "failed": torch.tensor(failed, dtype=torch.long)}

    return env.cache.get("sentiment-pixels", {"data": loaded.fingerprint, "size": size}, build,
                         label=f"decoding images at {size} px", total=len(paths))


def _prepare_tokens(loaded: Loaded, env: TrialEnv, backbone: TextBackbone, max_length: int) -> dict[str, Any]:
    """Token ids of every text, padded to ``max_length`` (trimmed per batch), once per sweep."""
    data: SentimentData = loaded.payload.data
    texts = [e.text for e in data.labelled + data.unlabelled]

    def build() -> dict[str, Any]:
        enc = backbone.tokenizer(texts, max_length=max_length, truncation=True, padding="max_length", return_tensors="pt")
        env.cache.advance(len(texts))
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    key = {"data": loaded.fingerprint, "tokenizer": backbone.name, "max_length": max_length}
    return env.cache.get("sentiment-tokens", key, build, label="tokenising texts", total=len(texts))


def _encode_text(backbone: TextBackbone, tokens: Mapping[str, torch.Tensor], rows: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Text vectors of ``rows`` of the prepared tokens, each batch cut to its longest text."""
    return backbone.encode(*trimmed_to_device(tokens["input_ids"][rows], tokens["attention_mask"][rows], device))


def _encode_image(backbone: ImageBackbone, pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Image vectors of a batch of decoded images."""
    return backbone.model(backbone.normalise(to_device(pixels, device)))


@torch.no_grad()
def _encode_rows(model: nn.Module, encode: Callable[[torch.Tensor], torch.Tensor], rows: int, batch_size: int,
                 env: TrialEnv) -> torch.Tensor:
    """``encode(part)`` of every row, ``batch_size`` rows at a time under the trial's precision,
    with the frozen ``model`` on the trial's device in evaluation mode: float32 vectors on the CPU."""
    model.to(env.device).eval()
    out = []
    for part in torch.arange(rows).split(batch_size):
        with autocast(env.device, env.precision):
            out.append(encode(part).float().cpu())
        env.cache.advance(len(part))
    return torch.cat(out)


def _frozen_features(loaded: Loaded, config: Mapping[str, Any], env: TrialEnv, pixels: torch.Tensor,
                     modalities: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Vectors of every row from the frozen backbone of each of ``modalities`` (``text``,
    ``image``), computed once per sweep (a backbone is only loaded when its cache misses)."""
    rows = len(pixels)  # every row, labelled then unlabelled

    def text() -> torch.Tensor:
        seed_everything(env.seed)  # a random preset's weights are the sweep's
        backbone = load_text_backbone(config["text_model"], config["text_pooling"])
        tokens = _prepare_tokens(loaded, env, backbone, int(config["max_length"]))
        return _encode_rows(backbone.model, lambda part: _encode_text(backbone, tokens, part, env.device), rows, 64, env)

    def image() -> torch.Tensor:
        seed_everything(env.seed)
        backbone = load_image_backbone(config["image_model"], config["image_weights"] or None)
        return _encode_rows(backbone.model, lambda part: _encode_image(backbone, pixels[part], env.device), rows, 32, env)

    builds = {"text": text, "image": image}
    settings = {"text": {"pooling": config["text_pooling"], "max_length": int(config["max_length"])},
                "image": {"weights": config["image_weights"], "size": int(config["image_size"])}}
    features = {}
    for m in modalities:
        key = {"data": loaded.fingerprint, "model": config[f"{m}_model"], **settings[m], "precision": env.precision}
        features[m] = env.cache.get(f"sentiment-{m}-features", key, builds[m], label=f"{m} features of {config[f'{m}_model']}",
                                    total=rows)
    return features


class _SentimentTrainer(ModelTrainer):
    """One trial of the sentiment task on the shared :class:`ModelTrainer` (a round is an epoch).
    The model's parts are the heads (``head``) and, when fine-tuned, the backbones (``text``,
    ``image``); AdamW decays every parameter and ReduceLROnPlateau follows the validation loss,
    as in the report."""

    counters = ("epoch",)

    def __init__(self, loaded: Loaded, config: Mapping[str, Any], env: TrialEnv) -> None:
        if config["modality"] not in MODALITIES:
            raise DataError(f"modality must be one of {', '.join(MODALITIES)}, got {config['modality']!r}")
        self.modalities = ("text", "image") if config["modality"] == "fusion" else (config["modality"],)
        self.frozen = bool(config["freeze_backbones"])
        payload: _Payload = loaded.payload
        seed_everything(env.trial_seed)  # every model built below starts from the trial's seed
        prepared = _prepare_pixels(loaded, env, int(config["image_size"]))
        self._load_inputs(loaded, config, env, prepared["pixels"])
        if self.frozen:  # building the features (a cold cache) reseeds: the heads start from the trial's seed all the same
            seed_everything(env.trial_seed)
        failed, data = set(prepared["failed"].tolist()), payload.data
        unlabelled = range(len(data.labelled), len(data.labelled) + len(data.unlabelled))  # rows after the labelled ones
        self.train, self.val, test = (_split([r for r in rows if r not in failed], data) for rows in (payload.train, payload.val, unlabelled))
        self.test = test if len(test.rows) else None
        if self.frozen:
            self._standardise()
        dims = (self._width(m) if m in self.modalities else None for m in ("text", "image"))
        parts = {"head": FusionClassifier(*dims, config["complexity"], float(config["dropout"])),
                 **{m: backbone.model for m, backbone in self.backbones.items()}}
        super().__init__(parts, config, env, plateau_schedule(float(config["plateau_factor"]), int(config["plateau_patience"])))
        augment = config["augment"] and not self.frozen and "image" in self.modalities
        self.augment = v2.Compose([v2.RandomHorizontalFlip(), v2.RandomRotation(float(config["rotation_degrees"]))]) if augment else None
        self.batch_size = int(config["batch_size"])
        self.epoch = 0

    def _load_inputs(self, loaded: Loaded, config: Mapping[str, Any], env: TrialEnv, pixels: torch.Tensor) -> None:
        """Every row's inputs (:attr:`inputs`): frozen features (``text``, ``image``), or token ids
        and pixels with the backbones that will be fine-tuned on them (:attr:`backbones`)."""
        self.backbones: dict[str, Any] = {}
        self.inputs: dict[str, torch.Tensor] = {}
        if self.frozen:
            self.inputs.update(_frozen_features(loaded, config, env, pixels, self.modalities))
            return
        if "text" in self.modalities:
            self.backbones["text"] = load_text_backbone(config["text_model"], config["text_pooling"])
            self.inputs.update(_prepare_tokens(loaded, env, self.backbones["text"], int(config["max_length"])))
        if "image" in self.modalities:
            self.backbones["image"] = load_image_backbone(config["image_model"], config["image_weights"] or None)
            self.inputs["pixels"] = pixels

    def _width(self, modality: str) -> int:
        """The width of the ``modality`` vectors the heads read."""
        if self.frozen:
            return self.inputs[modality].shape[1]
        return self.backbones["text"].hidden_size if modality == "text" else self.backbones["image"].feature_dim

    def _standardise(self) -> None:
        """Z-score each frozen feature with the training rows' mean and standard deviation (the
        usual preprocessing of a probe on frozen features): raw sentence embeddings are tiny
        (|x| ~ 0.03) and pooled CNN features large, which would leave the heads barely moving at
        the learning rates the report searched."""
        for key, features in self.inputs.items():
            train = features[self.train.rows]
            self.inputs[key] = (features - train.mean(0)) / train.std(0).clamp(min=1e-6)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The report's AdamW: weight decay on every parameter, biases and normalisation weights too."""
        return [{"params": list(self.model.parameters()), "weight_decay": float(self.config["weight_decay"])}]

    def _vectors(self, modality: str, rows: torch.Tensor, training: bool) -> torch.Tensor:
        """The ``modality`` vectors of ``rows``: frozen features, or the backbone's output (on
        images augmented when training)."""
        if self.frozen:
            return to_device(self.inputs[modality][rows], self.device)
        if modality == "text":
            return _encode_text(self.backbones["text"], self.inputs, rows, self.device)
        pixels = self.inputs["pixels"][rows]
        if training and self.augment is not None:
            pixels = torch.stack([self.augment(p) for p in pixels])
        return _encode_image(self.backbones["image"], pixels, self.device)

    def _forward(self, rows: torch.Tensor, training: bool) -> torch.Tensor:
        vectors = {m: self._vectors(m, rows, training) for m in self.modalities}
        return self.model["head"](vectors.get("text"), vectors.get("image"))

    def train_round(self) -> tuple[int, float]:
        """One epoch over the training rows in a fresh order, one optimizer step per batch; returns
        the epoch and the mean cross-entropy per training example."""
        self.model.train()
        tally = self.round_tally()
        for idx in self.shuffled_batches(len(self.train.rows), self.batch_size):
            labels = to_device(self.train.labels[idx], self.device)
            with autocast(self.device, self.env.precision):
                loss = nn.functional.cross_entropy(self._forward(self.train.rows[idx], training=True), labels)
            if tally.add(self.optimise(loss), len(idx)):
                break
        self.epoch += 1
        return self.epoch, self.end_round()

    def _probabilities(self, split: _Split) -> np.ndarray:
        batches = split.rows.split(max(self.batch_size, 256 if self.frozen else 64))
        return class_probabilities(self.model, batches, lambda rows: self._forward(rows, training=False), self.device,
                                   self.env.precision)

    def evaluate(self) -> Evaluation:
        prob = self._probabilities(self.val)
        y_true = self.val.labels.numpy()
        metrics = {**classification_metrics(y_true, prob), "lr": self.learning_rate()}
        return Evaluation(metrics=metrics, outputs={"y_true": y_true, "y_pred": prob.argmax(1), "guids": self.val.guids})

    def predict_unlabelled(self) -> list[tuple[str, str]] | None:
        if self.test is None:
            return None
        return [(guid, LABELS[int(p)]) for guid, p in zip(self.test.guids, self._probabilities(self.test).argmax(1))]

    def close(self) -> None:
        """Give the trial's memory back (:meth:`ModelTrainer.close`) and drop the inputs."""
        super().close()
        self.inputs.clear()


def _fit(loaded: Loaded, config: Mapping[str, Any], env: TrialEnv, reporter: Reporter) -> FitResult:
    return fit_and_close(_SentimentTrainer(loaded, config, env), int(config["epochs"]), reporter, env)


def _format_predictions(predictions: list[tuple[str, str]]) -> str:
    """``guid,tag`` lines, the format of ``test_without_label.txt``."""
    return "guid,tag\n" + "".join(f"{guid},{tag}\n" for guid, tag in predictions)


def _prepare(loaded: Loaded, config: Mapping[str, Any], env: TrialEnv) -> None:
    """Decode every image once, before the first trial, and add the ones that do not decode to
    the read reports, so that the sweep's parent run records them."""
    if config["modality"] == "text":
        return  # nothing to report here; its trials decode the images once, to drop the rows that fail
    failed = _prepare_pixels(loaded, env, int(config["image_size"]))["failed"].tolist()
    data: SentimentData = loaded.payload.data
    n_labelled = len(data.labelled)
    for i in failed:
        report, example = ((loaded.reports[0], data.labelled[i]) if i < n_labelled
                           else (loaded.reports[-1], data.unlabelled[i - n_labelled]))
        report.skip("undecodable image file", example.image.name)
        report.used -= 1
    if n_labelled - sum(1 for i in failed if i < n_labelled) < 2:
        raise DataError(f"{loaded.reports[0].source}: fewer than 2 rows with a decodable image")


TASK = Task(
    name="sentiment",
    summary="text + image sentiment (positive/neutral/negative), a text and an image backbone fused",
    metric="val_accuracy",
    direction="maximize",
    defaults=DEFAULTS,
    default_space="sentiment",
    sample_data=Path(str(resources.files("sweeplab") / "data" / "sentiment")),
    load=_load,
    prepare=_prepare,
    fit=_fit,
    format_predictions=_format_predictions,
    limits=LIMITS,
)

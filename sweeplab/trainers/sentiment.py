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
from sweeplab.core import BOOLEAN, FRACTION, NON_NEGATIVE, NON_NEGATIVE_INT, POSITIVE, POSITIVE_INT, Limit  # what each parameter accepts
from sweeplab.datasets.cache import fingerprint_files
from sweeplab.datasets.images import decode_images
from sweeplab.datasets.report import DataError
from sweeplab.datasets.sentiment import LABELS, SentimentData, read_sentiment
from sweeplab.datasets.splits import majority_share, stratified_split
from sweeplab.trainers.backbones import ImageBackbone, TextBackbone, load_image_backbone, load_text_backbone
from sweeplab.trainers.device import autocast, compile_in_place
from sweeplab.trainers.loop import fit_and_close, seed_everything
from sweeplab.trainers.metrics import classification_metrics
from sweeplab.trainers.model_trainer import LossTally, adamw
from sweeplab.trainers.transfer import to_device

__all__ = ["TASK", "FusionClassifier", "widths"]

DEFAULTS: dict[str, Any] = {
    "batch_size": 32,
    "lr": 1e-5,
    "complexity": "high",
    "epochs": 10,
    "modality": "fusion",
    "dropout": 0.3,
    "weight_decay": 1e-4,
    "text_model": "minilm",
    "text_pooling": "auto",
    "image_model": "efficientnet-lite0",
    "image_weights": "",
    "freeze_backbones": True,
    "max_length": 128,
    "image_size": 224,
    "augment": True,
    "rotation_degrees": 10.0,
    "plateau_factor": 0.5,
    "plateau_patience": 1,
}
MODALITIES = ("fusion", "text", "image")
#: What each parameter accepts (checked before the first trial). ``text_model``,
#: ``image_model`` and ``image_weights`` have none: a preset, a model name or a local path.
LIMITS: dict[str, Limit] = {
    "batch_size": POSITIVE_INT,
    "lr": POSITIVE,
    "complexity": Limit.one_of("high", "low"),
    "epochs": POSITIVE_INT,
    "modality": Limit.one_of(*MODALITIES),
    "dropout": FRACTION,
    "weight_decay": NON_NEGATIVE,
    "text_pooling": Limit.one_of("auto", "cls", "mean"),
    "freeze_backbones": BOOLEAN,
    "max_length": Limit(low=3, integer=True),             # [CLS], one token, [SEP]
    "image_size": Limit(low=32, integer=True),
    "augment": BOOLEAN,
    "rotation_degrees": NON_NEGATIVE,                     # rotations within +- this angle
    "plateau_factor": Limit(low=0, high=1, low_open=True, high_open=True),
    "plateau_patience": NON_NEGATIVE_INT,
}


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

    def __init__(
        self,
        text_dim: int | None,
        image_dim: int | None,
        complexity: str,
        dropout: float,
        num_classes: int = len(LABELS),
    ) -> None:
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


def _batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


@torch.no_grad()
def _text_features(backbone: TextBackbone, tokens: dict[str, Any], device: torch.device, precision: str,
                   advance: Callable[[int], None]) -> torch.Tensor:
    backbone.model.to(device).eval()
    out = []
    for part in _batches(len(tokens["input_ids"]), 64):
        mask = tokens["attention_mask"][part]
        width = int(mask.sum(1).max())
        with autocast(device, precision):
            vec = backbone.encode(tokens["input_ids"][part, :width].to(device), mask[:, :width].to(device))
        out.append(vec.float().cpu())
        advance(len(mask))
    return torch.cat(out)


@torch.no_grad()
def _image_features(backbone: ImageBackbone, pixels: torch.Tensor, device: torch.device, precision: str,
                    advance: Callable[[int], None]) -> torch.Tensor:
    backbone.model.to(device).eval()
    out = []
    for part in _batches(len(pixels), 32):
        with autocast(device, precision):
            vec = backbone.model(backbone.normalise(pixels[part].to(device)))
        out.append(vec.float().cpu())
        advance(len(vec))
    return torch.cat(out)


def _frozen_text_features(loaded: Loaded, config: Mapping[str, Any], env: TrialEnv) -> torch.Tensor:
    """Text vectors of every row from the frozen text backbone, computed once per sweep (the
    backbone is only loaded when the cache misses)."""
    key = {"data": loaded.fingerprint, "model": config["text_model"], "pooling": config["text_pooling"],
           "max_length": int(config["max_length"]), "precision": env.precision}

    def build() -> torch.Tensor:
        seed_everything(env.seed)
        backbone = load_text_backbone(config["text_model"], config["text_pooling"])
        tokens = _prepare_tokens(loaded, env, backbone, int(config["max_length"]))
        return _text_features(backbone, tokens, env.device, env.precision, env.cache.advance)

    rows = len(loaded.payload.data.labelled) + len(loaded.payload.data.unlabelled)
    return env.cache.get("sentiment-text-features", key, build, label=f"text features of {config['text_model']}", total=rows)


def _frozen_image_features(loaded: Loaded, config: Mapping[str, Any], env: TrialEnv, pixels: torch.Tensor) -> torch.Tensor:
    """Image vectors of every row from the frozen image backbone, computed once per sweep."""
    key = {"data": loaded.fingerprint, "model": config["image_model"], "weights": config["image_weights"],
           "size": int(config["image_size"]), "precision": env.precision}

    def build() -> torch.Tensor:
        seed_everything(env.seed)
        backbone = load_image_backbone(config["image_model"], config["image_weights"] or None)
        return _image_features(backbone, pixels, env.device, env.precision, env.cache.advance)

    return env.cache.get("sentiment-image-features", key, build, label=f"image features of {config['image_model']}",
                         total=len(pixels))


class _SentimentTrainer:
    """One trial of the sentiment task as a :class:`~sweeplab.trainers.loop.RoundTrainer`."""

    def __init__(self, loaded: Loaded, config: Mapping[str, Any], env: TrialEnv) -> None:
        self.env = env
        self.device = env.device
        modality = config["modality"]
        if modality not in MODALITIES:
            raise DataError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")
        self.use_text = modality in ("fusion", "text")
        self.use_image = modality in ("fusion", "image")
        self.frozen = bool(config["freeze_backbones"])
        payload: _Payload = loaded.payload
        data = payload.data
        seed_everything(env.trial_seed)  # every model built below starts from the trial's seed

        prepared = _prepare_pixels(loaded, env, int(config["image_size"]))
        failed = set(prepared["failed"].tolist())
        self.inputs: dict[str, torch.Tensor] = {}
        text_bb = image_bb = None
        if self.frozen:
            if self.use_text:
                self.inputs["text"] = _frozen_text_features(loaded, config, env)
            if self.use_image:
                self.inputs["image"] = _frozen_image_features(loaded, config, env, prepared["pixels"])
        else:
            if self.use_text:
                text_bb = load_text_backbone(config["text_model"], config["text_pooling"])
                tokens = _prepare_tokens(loaded, env, text_bb, int(config["max_length"]))
                self.inputs["input_ids"], self.inputs["attention_mask"] = tokens["input_ids"], tokens["attention_mask"]
            if self.use_image:
                image_bb = load_image_backbone(config["image_model"], config["image_weights"] or None)
                self.inputs["pixels"] = prepared["pixels"]

        n_labelled = len(data.labelled)
        self.train = self._split([i for i in payload.train if i not in failed], data)
        self.val = self._split([i for i in payload.val if i not in failed], data)
        test_rows = [n_labelled + j for j in range(len(data.unlabelled)) if n_labelled + j not in failed]
        self.test = self._split(test_rows, data) if test_rows else None

        if self.frozen:
            self._standardise()
        self.text_bb, self.image_bb = text_bb, image_bb
        text_dim = (self.inputs["text"].shape[1] if self.frozen else text_bb.hidden_size) if self.use_text else None
        image_dim = (self.inputs["image"].shape[1] if self.frozen else image_bb.feature_dim) if self.use_image else None
        self.head = FusionClassifier(text_dim, image_dim, config["complexity"], float(config["dropout"])).to(self.device)
        params = list(self.head.parameters())
        if not self.frozen:
            if self.use_text:
                text_bb.model.to(self.device)
                params += list(text_bb.model.parameters())
            if self.use_image:
                image_bb.model.to(self.device)
                params += list(image_bb.model.parameters())
        self.optimizer = adamw(params, float(config["lr"]), float(config["weight_decay"]))
        compile_in_place(self._modules(), env.compile)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=float(config["plateau_factor"]), patience=int(config["plateau_patience"])
        )
        self.augment = (
            v2.Compose([v2.RandomHorizontalFlip(), v2.RandomRotation(float(config["rotation_degrees"]))])
            if config["augment"] and not self.frozen and self.use_image
            else None
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=env.precision == "fp16")
        self.batch_size = int(config["batch_size"])
        self.epoch = 0
        self.generator = torch.Generator().manual_seed(env.trial_seed)

    def _standardise(self) -> None:
        """Z-score each frozen feature with the training rows' mean and standard deviation (the
        usual preprocessing of a probe on frozen features): raw sentence embeddings are tiny
        (|x| ~ 0.03) and pooled CNN features large, which would leave the heads barely moving at
        the learning rates the report searched."""
        for key in ("text", "image"):
            if key in self.inputs:
                train = self.inputs[key][self.train.rows]
                mean, std = train.mean(0), train.std(0).clamp(min=1e-6)
                self.inputs[key] = (self.inputs[key] - mean) / std

    def _split(self, rows: list[int], data: SentimentData) -> _Split:
        n_labelled = len(data.labelled)
        examples = [data.labelled[r] if r < n_labelled else data.unlabelled[r - n_labelled] for r in rows]
        labels = [e.label for e in examples]
        return _Split(
            rows=torch.tensor(rows, dtype=torch.long),
            labels=None if None in labels else torch.tensor(labels, dtype=torch.long),
            guids=[e.guid for e in examples],
        )

    def _modules(self) -> list[nn.Module]:
        modules: list[nn.Module] = [self.head]
        if self.text_bb is not None:
            modules.append(self.text_bb.model)
        if self.image_bb is not None:
            modules.append(self.image_bb.model)
        return modules

    def _forward(self, rows: torch.Tensor, training: bool) -> torch.Tensor:
        text = image = None
        if self.use_text:
            if self.frozen:
                text = to_device(self.inputs["text"][rows], self.device)
            else:
                mask = self.inputs["attention_mask"][rows]  # on the host: its width is read without a wait
                width = int(mask.sum(1).max())
                text = self.text_bb.encode(
                    to_device(self.inputs["input_ids"][rows, :width], self.device), to_device(mask[:, :width], self.device)
                )
        if self.use_image:
            if self.frozen:
                image = to_device(self.inputs["image"][rows], self.device)
            else:
                pixels = self.inputs["pixels"][rows]
                if training and self.augment is not None:
                    pixels = torch.stack([self.augment(p) for p in pixels])
                image = self.image_bb.model(self.image_bb.normalise(to_device(pixels, self.device)))
        return self.head(text, image)

    def train_round(self) -> tuple[int, float]:
        for module in self._modules():
            module.train()
        order = torch.randperm(len(self.train.rows), generator=self.generator)
        tally = LossTally()
        for part in _batches(len(order), self.batch_size):
            idx = order[part]
            rows = self.train.rows[idx]
            labels = to_device(self.train.labels[idx], self.device)
            with autocast(self.device, self.env.precision):
                loss = nn.functional.cross_entropy(self._forward(rows, training=True), labels)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if tally.add(loss, len(idx)):
                break
        self.epoch += 1
        return self.epoch, tally.mean()

    @torch.no_grad()
    def _probabilities(self, split: _Split) -> np.ndarray:
        for module in self._modules():
            module.eval()
        out = []
        for part in _batches(len(split.rows), max(self.batch_size, 256 if self.frozen else 64)):
            with autocast(self.device, self.env.precision):
                logits = self._forward(split.rows[part], training=False)
            out.append(torch.softmax(logits.float(), dim=-1))
        return torch.cat(out).cpu().numpy()  # read back once, not once a batch

    def evaluate(self) -> Evaluation:
        prob = self._probabilities(self.val)
        y_true = self.val.labels.numpy()
        metrics = classification_metrics(y_true, prob)
        metrics["lr"] = float(self.optimizer.param_groups[0]["lr"])
        return Evaluation(metrics=metrics, outputs={"y_true": y_true, "y_pred": prob.argmax(1), "guids": self.val.guids})

    def after_evaluation(self, metrics: Mapping[str, float]) -> None:
        self.scheduler.step(metrics["val_loss"])

    def snapshot(self) -> dict[str, Any]:
        """State dicts by part: ``head``, and ``text`` / ``image`` when those backbones are
        fine-tuned (the loop keeps a CPU copy, :func:`~sweeplab.trainers.loop.keep_copy`)."""
        parts = {"head": self.head, "text": self.text_bb.model if self.text_bb else None,
                 "image": self.image_bb.model if self.image_bb else None}
        return {name: module.state_dict() for name, module in parts.items() if module is not None}

    def predict_unlabelled(self) -> list[tuple[str, str]] | None:
        if self.test is None:
            return None
        pred = self._probabilities(self.test).argmax(1)
        return [(guid, LABELS[int(p)]) for guid, p in zip(self.test.guids, pred)]

    def close(self) -> None:
        """Give the trial's memory back: models to the CPU, optimizer state and inputs dropped."""
        for module in self._modules():
            module.to("cpu")
        self.optimizer.state.clear()
        self.inputs.clear()


def _fit(loaded: Loaded, config: Mapping[str, Any], env: TrialEnv, reporter: Reporter) -> FitResult:
    trainer = _SentimentTrainer(loaded, config, env)
    return fit_and_close(trainer, int(config["epochs"]), reporter, env)


def _format_predictions(predictions: list[tuple[str, str]]) -> str:
    """``guid,tag`` lines, the format of ``test_without_label.txt``."""
    return "guid,tag\n" + "".join(f"{guid},{tag}\n" for guid, tag in predictions)


def _prepare(loaded: Loaded, config: Mapping[str, Any], env: TrialEnv) -> None:
    """Decode every image once, before the first trial, and add the ones that do not decode to
    the read reports, so that the sweep's parent run records them."""
    if config["modality"] == "text":
        return  # images are never decoded for a text-only sweep
    failed = _prepare_pixels(loaded, env, int(config["image_size"]))["failed"].tolist()
    data: SentimentData = loaded.payload.data
    n_labelled = len(data.labelled)
    for i in failed:
        report, example = (
            (loaded.reports[0], data.labelled[i]) if i < n_labelled else (loaded.reports[-1], data.unlabelled[i - n_labelled])
        )
        report.skip("undecodable image file", example.image.name)
        report.used -= 1
    if n_labelled - sum(1 for i in failed if i < n_labelled) < 2:
        raise DataError(f"{loaded.reports[0].source}: fewer than 2 rows with a decodable image")


TASK = Task(
    name="sentiment",
    summary="text + image sentiment (positive/neutral/negative), BERT + ResNet-50 fused",
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

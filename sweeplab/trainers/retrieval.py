"""The ``retrieval`` task: Chinese text-to-image retrieval with Chinese-CLIP on MUGE-format data,
after the last section of the lab report in ``shared/seeds/000`` (ViT-B/16 image tower,
RoBERTa-wwm-ext-base-chinese text tower; warm-up 100 steps, batch 64, lr 5e-5, weight decay 0.001,
at most 3 epochs).

Model (``model``): ``transformers.ChineseCLIPModel`` from any model name or local directory, or
``scratch`` (the offline default): a small randomly initialised ChineseCLIP (``text_layers`` /
``vision_layers`` layers of width ``hidden_size``, a ViT with ``patch_size`` patches on
``image_size`` images) with the real bert-base-chinese vocabulary. ``freeze_text`` /
``freeze_vision`` keep a tower (with its projection) fixed.

Training: the symmetric contrastive (InfoNCE) loss with the learned temperature, as
``ChineseCLIPModel`` computes it (``return_loss=True``); the temperature is kept at or above
1/100 after each step, as Chinese-CLIP's own training does. An epoch visits each training text once,
paired with one of its images drawn at random. AdamW, cosine schedule after ``warmup_steps`` of
linear warm-up (Chinese-CLIP's recipe), gradient clipping at ``max_grad_norm``.

Evaluation, once per epoch, on the ``valid`` split: every text and every image is embedded once;
``val_t2i_r1`` / ``r5`` / ``r10`` are text-to-image Recall@K (a text is found when any of its
``image_ids`` is in the top K), ``val_recall_mean`` their mean (MUGE's score, and the trial's
metric), ``val_i2t_*`` the same from image to text (an image is found when any text naming it is
in the top K), and ``val_loss`` the contrastive loss over batches of ``eval_batch_size`` pairs
(each text with its first image). Texts and images are prepared once per sweep: tokenised
(:mod:`sweeplab.trainers.tokens`) and decoded and resized to ``uint8`` tensors
(:mod:`sweeplab.datasets.images`), cached, and shared by every trial.

Memory: a split's images are held as one ``uint8`` tensor, ``3 x image_size^2`` bytes an image
(12 KB at the scratch model's 64 px, 150 KB at a pretrained ViT's 224 px): fine for the generated
set and for tens of thousands of images, but the full MUGE training split (about 130k images at
224 px, about 20 GB) needs more memory than most machines have; decoding per batch from the
cache is the change that would lift this.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sweeplab.core import Evaluation, FitResult, Loaded, Reporter, Task, TrialEnv
from sweeplab.datasets.cache import fingerprint_files
from sweeplab.datasets.images import decode_images
from sweeplab.datasets.muge import MugeData, MugeSplit, read_muge
from sweeplab.datasets.errors import DataError
from sweeplab.trainers.backbones import BackboneError, quiet_loaders
from sweeplab.trainers.device import autocast
from sweeplab.trainers.loop import fit_and_close, seed_everything
from sweeplab.trainers.metrics import recall_at_k
from sweeplab.trainers.model_trainer import ModelTrainer, save_with_tokenizer, warmup_schedule
from sweeplab.trainers.settings.retrieval import DEFAULTS, LIMITS  # torch-free: `sweep run` checks --set against them first
from sweeplab.trainers.tokens import SCRATCH, TokenisedTexts, batch_inputs, frame_ids, load_tokenizer_for, tokenise
from sweeplab.trainers.transfer import normalise_channels, to_device, to_device_all

__all__ = ["TASK", "retrieval_metrics"]

KS = (1, 5, 10)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _load(data_dir: Path, seed: int, val_fraction: float, settings: Mapping[str, Any]) -> Loaded:
    data = read_muge(data_dir)
    return Loaded(payload=data, reports=data.reports, fingerprint=fingerprint_files(data.files))


def _image_size(config: Mapping[str, Any]) -> int:
    """The side images are resized to: the config's for ``scratch``, else the checkpoint's own."""
    if str(config["model"]) == SCRATCH:
        return int(config["image_size"])
    from transformers import AutoConfig

    try:
        return int(AutoConfig.from_pretrained(str(config["model"])).vision_config.image_size)
    except (OSError, ValueError, AttributeError) as exc:
        raise BackboneError(f"model {config['model']!r}: no ChineseCLIP configuration can be loaded offline ({exc})") from None


@dataclass(frozen=True)
class _Prepared:
    """One split ready for a trial: tokenised texts, decoded images, each text's image rows
    (undecodable images removed) and each image's text rows."""

    texts: TokenisedTexts
    pixels: torch.Tensor
    targets: list[list[int]]
    texts_of: list[list[int]]


def _decoded(loaded: Loaded, env: TrialEnv, size: int) -> dict[str, dict[str, torch.Tensor]]:
    """Every split's images decoded and resized once per sweep (cached on disk for reruns)."""
    data: MugeData = loaded.payload

    def build() -> dict[str, dict[str, torch.Tensor]]:
        out = {}
        for split in data.splits():
            pixels, failed = decode_images(split.images, size, env.cache.advance)
            out[split.name] = {"pixels": pixels, "failed": torch.tensor(failed, dtype=torch.long)}
        return out

    return env.cache.get("muge-pixels", {"data": loaded.fingerprint, "size": size}, build,
                         label=f"decoding images at {size} px", total=sum(len(s.images) for s in data.splits()))


def _tokenised(loaded: Loaded, env: TrialEnv, tokenizer: Any, key: str) -> dict[str, dict[str, torch.Tensor]]:
    """Every split's texts tokenised once per sweep and tokenizer."""
    data: MugeData = loaded.payload

    def build() -> dict[str, dict[str, torch.Tensor]]:
        return {split.name: tokenise(tokenizer, split.texts, env.cache.advance) for split in data.splits()}

    return env.cache.get("muge-tokens", {"data": loaded.fingerprint, "tokenizer": key}, build, label="tokenising texts",
                         total=sum(len(s.texts) for s in data.splits()))


def _prepare_split(split: MugeSplit, pixels: dict[str, torch.Tensor], tokens: dict[str, torch.Tensor]) -> _Prepared:
    failed = set(pixels["failed"].tolist())
    kept_images = [i for i in range(len(split.image_ids)) if i not in failed]
    new_row = {old: new for new, old in enumerate(kept_images)}
    kept_texts, targets = [], []
    for t, found in enumerate(split.targets):
        rows = [new_row[i] for i in found if i in new_row]
        if rows:
            kept_texts.append(t)
            targets.append(rows)
    if not kept_texts:
        raise DataError(f"{split.name}: no text names an image that decodes")
    texts_of: list[list[int]] = [[] for _ in kept_images]
    for t, rows in enumerate(targets):
        for r in rows:
            texts_of[r].append(t)
    index = torch.tensor(kept_texts, dtype=torch.long)
    texts = TokenisedTexts(tokens["ids"][index], tokens["lengths"][index])
    kept = pixels["pixels"] if not failed else pixels["pixels"][torch.tensor(kept_images, dtype=torch.long)]  # no copy
    return _Prepared(texts, kept, targets, texts_of)


def _build_model(config: Mapping[str, Any], vocab_size: int) -> nn.Module:
    """A ChineseCLIPModel: random and small for ``scratch``, else a pretrained checkpoint."""
    from transformers import ChineseCLIPConfig, ChineseCLIPModel, ChineseCLIPTextConfig, ChineseCLIPVisionConfig

    spec = str(config["model"])
    if spec != SCRATCH:
        try:
            with quiet_loaders():
                return ChineseCLIPModel.from_pretrained(spec)
        except (OSError, ValueError) as exc:
            raise BackboneError(
                f"model {spec!r} cannot be loaded offline ({str(exc).splitlines()[0][:120]}); "
                f"give a local directory or model={SCRATCH}"
            ) from None
    hidden, heads = int(config["hidden_size"]), int(config["heads"])
    if hidden % heads:  # a trial's own values (they may be searched): the trial fails, not the sweep
        raise ValueError(f"hidden_size {hidden} is not a multiple of heads {heads}")
    size, patch = int(config["image_size"]), int(config["patch_size"])
    if size % patch:
        raise ValueError(f"image_size {size} is not a multiple of patch_size {patch}")
    text = ChineseCLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=int(config["text_layers"]),
                                 num_attention_heads=heads, intermediate_size=4 * hidden)
    vision = ChineseCLIPVisionConfig(hidden_size=hidden, num_hidden_layers=int(config["vision_layers"]),
                                     num_attention_heads=heads, intermediate_size=4 * hidden, image_size=size, patch_size=patch)
    both = ChineseCLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                             projection_dim=int(config["projection_dim"]))
    return ChineseCLIPModel(both)


def _normalise(pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 pixels to CLIP's normalised input on ``device``."""
    return normalise_channels(to_device(pixels, device).float() / 255.0, CLIP_MEAN, CLIP_STD)


def retrieval_metrics(similarity: np.ndarray, targets: list[list[int]], texts_of: list[list[int]], prefix: str) -> dict[str, float]:
    """Text-to-image and image-to-text Recall@1/5/10 of a text x image similarity matrix, and
    their means (see the module docstring)."""
    t2i = recall_at_k(similarity, targets, KS)
    i2t = recall_at_k(similarity.T, texts_of, KS)
    metrics = {f"{prefix}t2i_r{k}": v for k, v in t2i.items()}
    metrics.update({f"{prefix}i2t_r{k}": v for k, v in i2t.items()})
    metrics[f"{prefix}recall_mean"] = float(np.mean(list(t2i.values())))
    metrics[f"{prefix}i2t_mean"] = float(np.mean(list(i2t.values())))
    return metrics


@torch.no_grad()
def _evaluate(model: nn.Module, split: _Prepared, frame: tuple[int, int, int], config: Mapping[str, Any], env: TrialEnv,
              prefix: str) -> Evaluation:
    """Embed every text and image once; recall from their similarities, loss over pair batches."""
    from transformers.models.chinese_clip.modeling_chinese_clip import image_text_contrastive_loss

    model.eval()
    size, max_length = int(config["eval_batch_size"]), int(config["max_length"])
    text_parts, image_parts = [], []
    for start in range(0, len(split.texts), size):
        rows = torch.arange(start, min(start + size, len(split.texts)))
        inputs = to_device_all(batch_inputs(split.texts, rows, max_length, *frame), env.device)
        with autocast(env.device, env.precision):
            text_parts.append(model.get_text_features(**inputs).pooler_output.float())
    for start in range(0, len(split.pixels), size):
        with autocast(env.device, env.precision):
            pixels = _normalise(split.pixels[start : start + size], env.device)
            image_parts.append(model.get_image_features(pixel_values=pixels).pooler_output.float())
    text = nn.functional.normalize(torch.cat(text_parts), dim=-1)
    image = nn.functional.normalize(torch.cat(image_parts), dim=-1)
    similarity = (text @ image.T).cpu().numpy()
    scale = model.logit_scale.exp().float()
    first = to_device(torch.tensor([t[0] for t in split.targets]), text.device)
    starts = range(0, len(text), size)
    losses = torch.stack([image_text_contrastive_loss(scale * text[s : s + size] @ image[first[s : s + size]].T)
                          for s in starts]).float().cpu().tolist()  # read back once
    weights = [min(size, len(text) - s) for s in starts]
    metrics = {f"{prefix}loss": float(np.average(losses, weights=weights)), **retrieval_metrics(similarity, split.targets, split.texts_of, prefix)}
    return Evaluation(metrics=metrics, outputs={})


def _splits(loaded: Loaded, env: TrialEnv, config: Mapping[str, Any]) -> tuple[dict[str, _Prepared], Any, tuple[int, int, int]]:
    tokenizer, key = load_tokenizer_for(str(config["model"]))
    pixels = _decoded(loaded, env, _image_size(config))
    tokens = _tokenised(loaded, env, tokenizer, key)
    data: MugeData = loaded.payload
    return {s.name: _prepare_split(s, pixels[s.name], tokens[s.name]) for s in data.splits()}, tokenizer, frame_ids(tokenizer)


class _RetrievalTrainer(ModelTrainer):
    """One trial of the retrieval task as a :class:`~sweeplab.trainers.loop.RoundTrainer` (a
    round is an epoch)."""

    counters = ("epoch",)

    def __init__(self, loaded: Loaded, config: Mapping[str, Any], env: TrialEnv) -> None:
        for key in ("epochs", "batch_size", "eval_batch_size"):
            if int(config[key]) < 1:
                raise DataError(f"{key} {config[key]}: expected a positive number")
        if int(config["max_length"]) < 3:
            raise DataError(f"max_length {config['max_length']}: expected at least 3 ([CLS], one token, [SEP])")
        splits, tokenizer, self.frame = _splits(loaded, env, config)
        self.train, self.valid = splits["train"], splits["valid"]
        seed_everything(env.trial_seed)
        model = _build_model(config, len(tokenizer))
        towers = {"freeze_text": ("text_model", "text_projection"), "freeze_vision": ("vision_model", "visual_projection")}
        for flag, parts in towers.items():
            if config[flag]:
                for part in parts:
                    getattr(model, part).requires_grad_(False)
        self.batch_size = int(config["batch_size"])
        total = int(config["epochs"]) * math.ceil(len(self.train.texts) / self.batch_size)
        super().__init__(model, config, env, warmup_schedule("cosine", total, int(config["warmup_steps"])))
        self.epoch = 0

    def train_round(self) -> tuple[int, float]:
        self.model.train()
        max_length = int(self.config["max_length"])
        tally = self.round_tally()
        for rows in self.shuffled_batches(len(self.train.texts), self.batch_size):
            if len(rows) < 2:
                continue  # a contrastive batch needs negatives
            picks = torch.randint(0, 1 << 30, (len(rows),), generator=self.generator)
            images = torch.tensor([self.train.targets[r][int(p) % len(self.train.targets[r])] for r, p in zip(rows.tolist(), picks)])
            inputs = to_device_all(batch_inputs(self.train.texts, rows, max_length, *self.frame), self.device)
            with autocast(self.device, self.env.precision):
                loss = self.model(**inputs, pixel_values=_normalise(self.train.pixels[images], self.device), return_loss=True).loss
            diverged = tally.add(self.optimise(loss))
            with torch.no_grad():  # as Chinese-CLIP does: a temperature of at least 1/100
                self.model.logit_scale.clamp_(0, math.log(100))
            if diverged:
                break
        self.epoch += 1
        return self.epoch, self.end_round()

    def evaluate(self) -> Evaluation:
        evaluation = _evaluate(self.model, self.valid, self.frame, self.config, self.env, "val_")
        evaluation.metrics["lr"] = self.learning_rate()
        evaluation.metrics["temperature"] = float(1.0 / self.model.logit_scale.detach().exp())
        return evaluation


def _fit(loaded: Loaded, config: Mapping[str, Any], env: TrialEnv, reporter: Reporter) -> FitResult:
    return fit_and_close(_RetrievalTrainer(loaded, config, env), int(config["epochs"]), reporter, env)


def _save_checkpoint(loaded: Loaded, config: Mapping[str, Any], state: Mapping[str, Any], folder: Path) -> None:
    """The best model as a ``save_pretrained`` folder with its tokenizer:
    ``ChineseCLIPModel.from_pretrained(folder)`` loads it."""
    tokenizer, _ = load_tokenizer_for(str(config["model"]))
    save_with_tokenizer(_build_model(config, len(tokenizer)), state, tokenizer, folder)


def _evaluate_test(loaded: Loaded, config: Mapping[str, Any], folder: Path, env: TrialEnv) -> Evaluation | None:
    """Recall of the checkpoint in ``folder`` on the test split (``test_recall_mean`` ...)."""
    if loaded.payload.test is None:
        return None
    from transformers import ChineseCLIPModel

    splits, _, frame = _splits(loaded, env, config)
    with quiet_loaders():
        model = ChineseCLIPModel.from_pretrained(folder).to(env.device)
    try:
        return _evaluate(model, splits["test"], frame, config, env, "test_")
    finally:
        model.to("cpu")


def _prepare(loaded: Loaded, config: Mapping[str, Any], env: TrialEnv) -> None:
    """Decode every image and tokenise every text once, before the first trial, and add the images
    that do not decode to the read reports (so the sweep's parent run records them)."""
    data: MugeData = loaded.payload
    pixels = _decoded(loaded, env, _image_size(config))
    tokenizer, key = load_tokenizer_for(str(config["model"]))
    _tokenised(loaded, env, tokenizer, key)
    for split in data.splits():
        failed = pixels[split.name]["failed"].tolist()
        report = data.image_report(split.name)
        for i in failed:
            report.skip("image does not decode", f"image_id {split.image_ids[i]}")
            report.used -= 1
        if len(failed) == len(split.image_ids):
            raise DataError(f"{split.name}_imgs.tsv: no image decodes")


TASK = Task(
    name="retrieval",
    summary="Chinese text-to-image retrieval (MUGE format) with Chinese-CLIP, contrastive loss",
    metric="val_recall_mean",
    direction="maximize",
    defaults=DEFAULTS,
    default_space="retrieval",
    sample_data=Path(str(resources.files("sweeplab") / "data" / "retrieval")),
    load=_load,
    prepare=_prepare,
    fit=_fit,
    save_checkpoint=_save_checkpoint,
    evaluate_test=_evaluate_test,
    limits=LIMITS,
)

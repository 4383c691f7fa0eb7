"""The ``news`` task: Chinese news classification, after the lab report in ``shared/seeds/000``
(bert-base-chinese, batch 8, evaluated every N steps, the best checkpoint chosen by validation
accuracy).

Model (``model``), a family the space may search:

* any transformers model name or local directory, loaded with
  ``AutoModelForSequenceClassification`` (a pretrained checkpoint is fine-tuned);
* ``scratch``: a randomly initialised BERT of ``layers`` layers, width ``hidden_size`` and
  ``heads`` attention heads;
* ``textcnn`` (``embedding_dim``, ``filters``, ``kernel_sizes``) and ``fasttext``
  (``embedding_dim``, ``ngrams``, ``buckets``): the classic models of news-title classification,
  which learn well without pretrained weights (:mod:`sweeplab.trainers.text_models`).

The last three read the real bert-base-chinese vocabulary that ships with sweeplab, so Chinese text
is split one character per token exactly as bert-base-chinese does, and share one token cache.

Data: read by :mod:`sweeplab.datasets.news` (cnews, THUCNews titles or CCF 2019), tokenised once per
sweep and tokenizer and cached (:mod:`sweeplab.trainers.tokens`: a trial cuts texts to its own
``max_length`` and pads each batch to its longest text).

Training: AdamW (no weight decay on biases and LayerNorm weights, the usual BERT practice), a
linear schedule with ``warmup_ratio`` of the steps as warm-up, gradient clipping at
``max_grad_norm``. Evaluation every ``eval_every`` optimizer steps, or once per epoch when it is 0;
the curves' x axis is the optimizer step. After the search, the best trial's checkpoint (a
``save_pretrained`` folder, loadable with transformers) is evaluated once on the test split.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sweeplab.core import Evaluation, FitResult, Loaded, Reporter, Task, TrialEnv
from sweeplab.datasets.cache import fingerprint_files
from sweeplab.datasets.news import NewsData, read_news
from sweeplab.datasets.errors import DataError
from sweeplab.datasets.splits import majority_share
from sweeplab.trainers.backbones import BackboneError, quiet_loaders
from sweeplab.trainers.device import autocast
from sweeplab.trainers.loop import fit_and_close, seed_everything
from sweeplab.trainers.metrics import classification_metrics
from sweeplab.trainers.model_trainer import ModelTrainer, class_probabilities, save_with_tokenizer, warmup_schedule
from sweeplab.trainers.settings.news import DEFAULTS, LIMITS  # torch-free: `sweep run` checks --set against them first
from sweeplab.trainers.text_models import FAMILIES, build_text_model, load_text_model, parse_kernel_sizes, save_text_model
from sweeplab.trainers.tokens import SCRATCH, TOKEN_CAP, TokenisedTexts, batch_inputs, frame_ids, load_tokenizer_for, tokenise
from sweeplab.trainers.transfer import to_device, to_device_all

__all__ = ["TASK"]

SPLITS = ("train", "val", "test")


def _load(data_dir: Path, seed: int, val_fraction: float, settings: Mapping[str, Any]) -> Loaded:
    data = read_news(data_dir, str(settings.get("layout", "auto")), seed, val_fraction)
    return Loaded(payload=data, reports=data.reports, fingerprint=fingerprint_files(data.files), class_names=data.classes,
                  majority=majority_share(data.val.labels))


@dataclass(frozen=True)
class _Split:
    """One split, tokenised, with its label indices."""

    texts: TokenisedTexts
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


def _tokens(loaded: Loaded, env: TrialEnv, tokenizer: Any, key: str) -> dict[str, _Split]:
    """Every split tokenised, once per sweep and tokenizer (cached on disk for reruns)."""
    data: NewsData = loaded.payload

    splits = {name: split for name in SPLITS if (split := getattr(data, name)) is not None}

    def build() -> dict[str, dict[str, torch.Tensor]]:
        return {name: {**tokenise(tokenizer, split.texts, env.cache.advance), "labels": torch.tensor(split.labels, dtype=torch.long)}
                for name, split in splits.items()}

    # The files' fingerprint alone does not fix the rows of a split held out with a seed.
    rows = hashlib.sha1("\n".join(o for n in SPLITS if getattr(data, n) for o in getattr(data, n).origin).encode()).hexdigest()
    raw = env.cache.get("news-tokens", {"data": loaded.fingerprint, "rows": rows[:16], "tokenizer": key, "cap": TOKEN_CAP}, build,
                        label="tokenising titles", total=sum(len(s.texts) for s in splits.values()))
    return {name: _Split(TokenisedTexts(parts["ids"], parts["lengths"]), parts["labels"]) for name, parts in raw.items()}


def _tokenizer_of(config: Mapping[str, Any]) -> str:
    """The ``model`` whose tokenizer a configuration reads: every from-scratch family reads the
    bert-base-chinese vocabulary of ``scratch``."""
    spec = str(config["model"])
    return SCRATCH if spec in FAMILIES else spec


def _build_model(config: Mapping[str, Any], num_labels: int, vocab_size: int, pad_id: int = 0) -> nn.Module:
    """A sequence classifier: a random BERT for ``scratch``, a TextCNN or fastText model for those
    families, else a pretrained checkpoint."""
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

    spec = str(config["model"])
    if spec in FAMILIES:
        return build_text_model(spec, config, num_labels, vocab_size, pad_id)
    if spec == SCRATCH:
        hidden, heads = int(config["hidden_size"]), int(config["heads"])
        if hidden % heads:  # a trial's own values (they may be searched): the trial fails, not the sweep
            raise ValueError(f"hidden_size {hidden} is not a multiple of heads {heads}")
        dropout = float(config["dropout"])
        bert = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=int(config["layers"]),
                          num_attention_heads=heads, intermediate_size=4 * hidden, max_position_embeddings=TOKEN_CAP + 2,
                          hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, num_labels=num_labels)
        return BertForSequenceClassification(bert)
    try:
        with quiet_loaders():
            return AutoModelForSequenceClassification.from_pretrained(spec, num_labels=num_labels, ignore_mismatched_sizes=True)
    except (OSError, ValueError) as exc:
        raise BackboneError(
            f"model {spec!r} cannot be loaded offline ({str(exc).splitlines()[0][:120]}); give a local directory or model=scratch"
        ) from None


def _probabilities(model: nn.Module, split: _Split, frame: tuple[int, int, int], max_length: int,
                   batch_size: int, device: torch.device, precision: str) -> np.ndarray:
    """Class probabilities of every row (:func:`class_probabilities`), batched by length (short
    texts together) for speed."""
    order = torch.argsort(split.texts.lengths.long(), stable=True)

    def logits_of(rows: torch.Tensor) -> torch.Tensor:
        return model(**to_device_all(batch_inputs(split.texts, rows, max_length, *frame), device)).logits

    prob = class_probabilities(model, order.split(batch_size), logits_of, device, precision)
    out = np.empty_like(prob)
    out[order.numpy()] = prob
    return out


def _evaluate(model: nn.Module, split: _Split, frame: tuple[int, int, int], config: Mapping[str, Any],
              env: TrialEnv, prefix: str) -> Evaluation:
    prob = _probabilities(model, split, frame, int(config["max_length"]), int(config["eval_batch_size"]), env.device, env.precision)
    y_true = split.labels.numpy()
    return Evaluation(metrics=classification_metrics(y_true, prob, prefix=prefix),
                      outputs={"y_true": y_true, "y_pred": prob.argmax(1)})


def _check(config: Mapping[str, Any]) -> None:
    """One-line errors for settings no trial can run with."""
    if int(config["max_length"]) < 3:
        raise DataError(f"max_length {config['max_length']}: expected at least 3 ([CLS], one token, [SEP])")
    for key in ("epochs", "batch_size", "eval_batch_size"):
        if int(config[key]) < 1:
            raise DataError(f"{key} {config[key]}: expected a positive number")
    if int(config["eval_every"]) < 0:
        raise DataError(f"eval_every {config['eval_every']}: expected 0 (once per epoch) or a number of optimizer steps")
    if str(config["model"]) in FAMILIES:
        try:
            parse_kernel_sizes(config["kernel_sizes"])
        except ValueError as exc:
            raise DataError(str(exc)) from None
        for key in ("embedding_dim", "filters", "ngrams", "buckets"):
            if int(config[key]) < 1:
                raise DataError(f"{key} {config[key]}: expected a positive number")
    if not 0 <= float(config["dropout"]) < 1:
        raise DataError(f"dropout {config['dropout']}: expected a probability in [0, 1)")


class _NewsTrainer(ModelTrainer):
    """One trial of the news task as a :class:`~sweeplab.trainers.loop.RoundTrainer`: a round is
    ``eval_every`` optimizer steps (or one epoch), the step returned is the global step."""

    counters = ("step",)

    def __init__(self, loaded: Loaded, config: Mapping[str, Any], env: TrialEnv) -> None:
        _check(config)
        tokenizer, key = load_tokenizer_for(_tokenizer_of(config))
        self.frame = frame_ids(tokenizer)
        tokens = _tokens(loaded, env, tokenizer, key)
        self.train, self.val = tokens["train"], tokens["val"]
        seed_everything(env.trial_seed)
        model = _build_model(config, len(loaded.class_names), len(tokenizer), self.frame[2])
        positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        if positions is not None and int(config["max_length"]) > positions:
            raise DataError(f"max_length {config['max_length']}: the model {config['model']} has {positions} positions")
        self.batch_size = int(config["batch_size"])
        steps_per_epoch = math.ceil(len(self.train) / self.batch_size)
        self.total_steps = int(config["epochs"]) * steps_per_epoch
        self.every = int(config["eval_every"]) or steps_per_epoch
        self.rounds = math.ceil(self.total_steps / self.every)
        warmup = round(float(config["warmup_ratio"]) * self.total_steps)
        super().__init__(model, config, env, warmup_schedule("linear", self.total_steps, warmup))
        self.batches = self._batches()
        self.step = 0

    def _batches(self) -> Iterator[torch.Tensor]:
        """Row indices of training batches, reshuffled every epoch, without end."""
        while True:
            yield from self.shuffled_batches(len(self.train), self.batch_size)

    def train_round(self) -> tuple[int, float]:
        self.model.train()
        max_length = int(self.config["max_length"])
        tally = self.round_tally()
        end = min(self.total_steps, (self.step // self.every + 1) * self.every)  # a resumed round ends where it would have
        while self.step < end:
            rows = next(self.batches)
            inputs = to_device_all(batch_inputs(self.train.texts, rows, max_length, *self.frame), self.device)
            labels = to_device(self.train.labels[rows], self.device)
            with autocast(self.device, self.env.precision):
                logits = self.model(**inputs).logits
            self.step += 1
            if tally.add(self.optimise(nn.functional.cross_entropy(logits.float(), labels))):
                break
        return self.step, self.end_round()

    def evaluate(self) -> Evaluation:
        evaluation = _evaluate(self.model, self.val, self.frame, self.config, self.env, "val_")
        evaluation.metrics["lr"] = self.learning_rate()
        return evaluation


def _fit(loaded: Loaded, config: Mapping[str, Any], env: TrialEnv, reporter: Reporter) -> FitResult:
    trainer = _NewsTrainer(loaded, config, env)
    return fit_and_close(trainer, trainer.rounds, reporter, env)


def _save_checkpoint(loaded: Loaded, config: Mapping[str, Any], state: Mapping[str, Any], folder: Path) -> None:
    """The best model as a ``save_pretrained`` folder with its tokenizer and label names, so that
    ``AutoModelForSequenceClassification.from_pretrained(folder)`` loads it; a TextCNN or fastText
    model as ``model.pt`` beside its tokenizer (:func:`~sweeplab.trainers.text_models.load_text_model`)."""
    tokenizer, _ = load_tokenizer_for(_tokenizer_of(config))
    if str(config["model"]) in FAMILIES:
        save_text_model(folder, str(config["model"]), config, state, len(loaded.class_names), len(tokenizer),
                        frame_ids(tokenizer)[2], loaded.class_names)
        with quiet_loaders():
            tokenizer.save_pretrained(folder)
        return
    model = _build_model(config, len(loaded.class_names), len(tokenizer))
    model.config.id2label = dict(enumerate(loaded.class_names))
    model.config.label2id = {name: i for i, name in enumerate(loaded.class_names)}
    save_with_tokenizer(model, state, tokenizer, folder)


def _evaluate_test(loaded: Loaded, config: Mapping[str, Any], folder: Path, env: TrialEnv) -> Evaluation | None:
    """Metrics (``test_accuracy``...) of the checkpoint in ``folder`` on the test split; ``None``
    when the data has no test split."""
    if loaded.payload.test is None:
        return None
    from transformers import AutoModelForSequenceClassification

    tokenizer, key = load_tokenizer_for(_tokenizer_of(config))
    tokens = _tokens(loaded, env, tokenizer, key)
    if str(config["model"]) in FAMILIES:
        model = load_text_model(folder).to(env.device)
    else:
        with quiet_loaders():
            model = AutoModelForSequenceClassification.from_pretrained(folder).to(env.device)
    try:
        return _evaluate(model, tokens["test"], frame_ids(tokenizer), config, env, "test_")
    finally:
        model.to("cpu")


def _prepare(loaded: Loaded, config: Mapping[str, Any], env: TrialEnv) -> None:
    """Tokenise every split before the first trial and note in the training report how many
    tokens the vocabulary does not know (bert-base-chinese has no curly quotes, for example)."""
    tokenizer, key = load_tokenizer_for(_tokenizer_of(config))
    train = _tokens(loaded, env, tokenizer, key)["train"]
    texts = train.texts
    ids = texts.ids[torch.arange(texts.ids.shape[1])[None, :] < texts.lengths[:, None].long()]
    unk = tokenizer.unk_token_id
    unknown = int((ids == unk).sum()) if unk is not None else 0
    note = f"{unknown} of {len(ids)} training tokens are {tokenizer.unk_token} ({100 * unknown / max(len(ids), 1):.2f}%)"
    if unknown:
        data: NewsData = loaded.payload
        chars = Counter(ch for text in data.train.texts for ch in text if not ch.isspace())
        missing = [(n, ch) for ch, n in chars.items() if tokenizer.tokenize(ch) == [tokenizer.unk_token]]
        note += "; most often " + " ".join(ch for _, ch in sorted(missing, reverse=True)[:5])
    truncated = int((texts.lengths > int(config["max_length"]) - 2).sum())
    note += f"; {truncated} of {len(train)} training texts are longer than max_length {config['max_length']} and cut"
    loaded.reports[0].note(note)


TASK = Task(
    name="news",
    summary="Chinese news classification (cnews, THUCNews titles, CCF 2019) with a TextCNN, fastText or BERT model",
    metric="val_accuracy",
    direction="maximize",
    defaults=DEFAULTS,
    default_space="news",
    sample_data=Path(str(resources.files("sweeplab") / "data" / "news")),
    load=_load,
    prepare=_prepare,
    fit=_fit,
    x_axis="step",
    save_checkpoint=_save_checkpoint,
    evaluate_test=_evaluate_test,
    limits=LIMITS,
)

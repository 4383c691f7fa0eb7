"""A Hugging Face ``Trainer`` swept by sweeplab: a tiny random BERT classifying news titles.

    sweep run examples/trainer_news/trainer_news.py:fit --trials 10
    sweep best --task trainer-news

The model is a one-layer BERT with random weights over the Chinese BERT vocabulary that ships
with sweeplab (no download), trained on a few hundred of the packaged THUCNews titles (10
classes). The Trainer is built as usual; ``ReportCallback(report)`` reports each evaluation
(``eval_accuracy`` as ``val_accuracy``, at the Trainer's global step), stops training when the
trial is pruned or starts to overfit, and makes the best evaluation's weights the trial's
checkpoint. ``report_to="none"`` keeps transformers' own MLflow logging off (the trial's run
holds the curves), and ``save_strategy="no"`` its checkpoint folders (sweeplab keeps the best
weights itself). When sweeplab saves the trial's resume state (every ``--checkpoint-minutes``,
and at a stop signal) the callback has the Trainer write its checkpoint and hands it over; a
retry of a trial killed, preempted or stopped gets it back as ``callback.resume_from``, and
``trainer.train(resume_from_checkpoint=...)`` goes on from that step with the curve it would
have had uninterrupted (after a stop within an epoch, but for that epoch's ``train_loss``, which
averages only the steps trained after the resume).
"""

from __future__ import annotations

import functools
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (BertConfig, BertForSequenceClassification, BertTokenizer, PrinterCallback, Trainer,
                          TrainingArguments)
from transformers.utils import logging as transformers_logging

import sweeplab
from sweeplab.integrations.transformers import ReportCallback

# The progress bar of each checkpoint written for a resume state would print over the sweep's console.
transformers_logging.disable_progress_bar()

NEWS = Path(str(resources.files("sweeplab") / "data" / "news"))
VOCAB = Path(str(resources.files("sweeplab") / "trainers" / "chinese_bert_vocab"))
CLASSES = 10
MAX_LENGTH = 32  # the titles are short: most fit in 32 characters
Example = dict[str, torch.Tensor]  # one title's input_ids, attention_mask and label


def _titles(name: str, per_class: int) -> tuple[list[str], list[int]]:
    """The first ``per_class`` titles of each class in ``name`` (``title<TAB>label id`` lines)."""
    texts: list[str] = []
    labels: list[int] = []
    counts = [0] * CLASSES
    for line in (NEWS / name).read_text(encoding="utf-8").splitlines():
        text, label = line.rsplit("\t", 1)
        if counts[int(label)] < per_class:
            counts[int(label)] += 1
            texts.append(text)
            labels.append(int(label))
    return texts, labels


def _encoded(tokenizer: BertTokenizer, texts: list[str], labels: list[int]) -> list[Example]:
    """One dict of tensors per title, as the Trainer's default collator stacks them."""
    batch = tokenizer(texts, padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    return [{"input_ids": batch["input_ids"][i], "attention_mask": batch["attention_mask"][i],
             "labels": torch.tensor(labels[i])} for i in range(len(texts))]


@functools.cache  # the same titles for every trial of the sweep: tokenised once
def data(train_per_class: int = 100, val_per_class: int = 20) -> tuple[list[Example], list[Example], int]:
    """Tokenised training and validation titles (1,000 and 200, the same share of every class),
    and the tokenizer's vocabulary size."""
    tokenizer = BertTokenizer.from_pretrained(str(VOCAB))
    train = _encoded(tokenizer, *_titles("train.txt", train_per_class))
    val = _encoded(tokenizer, *_titles("dev.txt", val_per_class))
    return train, val, len(tokenizer)


def model(config: dict[str, Any], vocab_size: int) -> BertForSequenceClassification:
    """A one-layer BERT of ``hidden`` units with random weights and a 10-class head."""
    return BertForSequenceClassification(BertConfig(
        vocab_size=vocab_size, hidden_size=config["hidden"], num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=2 * config["hidden"], max_position_embeddings=MAX_LENGTH,
        hidden_dropout_prob=config["dropout"], num_labels=CLASSES))


def accuracy(prediction: Any) -> dict[str, float]:
    """The Trainer's ``compute_metrics``: reported as ``eval_accuracy``, swept as ``val_accuracy``."""
    return {"accuracy": float((np.argmax(prediction.predictions, axis=-1) == prediction.label_ids).mean())}


@sweeplab.trainer(name="trainer-news", metric="val_accuracy", space="trainer_news.toml", x_axis="step")
def fit(config: dict[str, Any], report: Any) -> None:
    """Train one configuration with a ``transformers.Trainer``, evaluating after every epoch; a retry
    of a stopped trial goes on from the checkpoint the callback handed over."""
    train, val, vocab_size = data()
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(
            output_dir=output_dir,
            eval_strategy="epoch",
            logging_strategy="epoch",  # a training loss at every evaluation
            save_strategy="no",
            report_to="none",
            num_train_epochs=config["epochs"],
            learning_rate=config["lr"],
            weight_decay=config["weight_decay"],
            per_device_train_batch_size=config["batch_size"],
            per_device_eval_batch_size=64,
            disable_tqdm=True,
            log_level="error",
            dataloader_pin_memory=torch.cuda.is_available(),
        )
        callback = ReportCallback(report)
        trainer = Trainer(model=model(config, vocab_size), args=args, train_dataset=train, eval_dataset=val,
                          compute_metrics=accuracy, callbacks=[callback])
        trainer.remove_callback(PrinterCallback)  # its log lines would print over the sweep's console
        trainer.train(resume_from_checkpoint=callback.resume_from)  # None on a first attempt

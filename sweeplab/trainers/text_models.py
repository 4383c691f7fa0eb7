"""Text classifiers that learn well from scratch on short texts: a TextCNN and a fastText-style
bag of n-grams, the two classic baselines of Chinese news-title classification.

Both read the same inputs as a transformers sequence classifier (``input_ids`` framed as
``[CLS] text [SEP]`` and an ``attention_mask``, from :mod:`sweeplab.trainers.tokens`, so they
share the token cache of the bert-base-chinese vocabulary: one token per Chinese character) and
return a :class:`~transformers.modeling_outputs.SequenceClassifierOutput`, so that a trainer
calls every model family the same way.

* :class:`TextCNN` (Kim 2014): character embeddings, one 1-d convolution per kernel width with
  ``filters`` channels each, ReLU, max-pooling over time, dropout, a linear layer.
* :class:`FastText` (Joulin et al. 2017): the mean of the embeddings of the characters and of
  their hashed n-grams up to ``ngrams`` (bigrams for 2; ``[CLS]`` and ``[SEP]`` mark the title's
  ends, as fastText's ``<`` and ``>`` do), dropout, a linear layer. An n-gram's bucket is a
  hash of its token ids modulo ``buckets``, as in fastText: the n-gram's exact number in base
  ``vocab_size``, mixed by a multiplicative (Fibonacci) hash so that every bucket is used evenly.

Their checkpoints are a ``model.pt`` (state dict and settings) beside the tokenizer files:
:func:`save_text_model` and :func:`load_text_model`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

__all__ = ["FAMILIES", "FastText", "TextCNN", "build_text_model", "load_text_model", "parse_kernel_sizes", "save_text_model"]

#: The ``model`` values that name a family of this module.
FAMILIES = ("textcnn", "fasttext")
#: The settings each family is built from (and saved with).
SETTINGS = {"textcnn": ("embedding_dim", "filters", "kernel_sizes", "dropout"),
            "fasttext": ("embedding_dim", "ngrams", "buckets", "dropout")}
#: 2^64 / golden ratio, as a signed 64-bit integer: Knuth's multiplicative hash (products wrap).
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)


def parse_kernel_sizes(value: str | int | Sequence[int]) -> tuple[int, ...]:
    """Kernel widths from ``"2,3,4"`` (the form a space file or ``--set`` gives), an int or a list."""
    if isinstance(value, int):
        widths: tuple[int, ...] = (value,)
    elif isinstance(value, str):
        try:
            widths = tuple(int(part) for part in value.split(",") if part.strip())
        except ValueError:
            raise ValueError(f"kernel_sizes {value!r}: expected widths separated by commas, such as \"2,3,4\"") from None
    else:
        widths = tuple(int(v) for v in value)
    if not widths or min(widths) < 1:
        raise ValueError(f"kernel_sizes {value!r}: expected one or more widths of at least 1")
    return widths


class TextCNN(nn.Module):
    """Kim's convolutional sentence classifier over character embeddings (see the module docstring)."""

    def __init__(self, vocab_size: int, num_labels: int, embedding_dim: int, filters: int, kernel_sizes: Sequence[int],
                 dropout: float, pad_id: int = 0) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_id)
        # padding k-1 on both sides lets a text shorter than the widest kernel still be convolved
        self.convs = nn.ModuleList(nn.Conv1d(embedding_dim, filters, k, padding=k - 1) for k in kernel_sizes)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(filters * len(kernel_sizes), num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SequenceClassifierOutput:
        mask = attention_mask.unsqueeze(1).to(self.embed.weight.dtype)
        x = self.embed(input_ids).transpose(1, 2) * mask  # (batch, dim, time), padding zeroed
        pooled = []
        for conv in self.convs:
            h = torch.relu(conv(x))
            width = conv.kernel_size[0]
            # positions whose window holds no real token would see only padding: left out of the max
            valid = nn.functional.max_pool1d(nn.functional.pad(mask, (width - 1, width - 1)), width, stride=1) > 0
            pooled.append((h * valid).amax(dim=2))  # h >= 0 after the ReLU, so a masked 0 never wins wrongly
        return SequenceClassifierOutput(logits=self.out(self.drop(torch.cat(pooled, dim=1))))


class FastText(nn.Module):
    """Mean of character and hashed n-gram embeddings, then a linear layer (see the module docstring)."""

    def __init__(self, vocab_size: int, num_labels: int, embedding_dim: int, ngrams: int, buckets: int, dropout: float) -> None:
        super().__init__()
        if ngrams < 1 or (ngrams > 1 and buckets < 1):
            raise ValueError(f"fastText needs ngrams >= 1 and buckets >= 1 for n-grams, got ngrams={ngrams}, buckets={buckets}")
        self.vocab_size, self.ngrams, self.buckets = vocab_size, ngrams, buckets
        self.embed = nn.Embedding(vocab_size + (buckets if ngrams > 1 else 0), embedding_dim)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(embedding_dim, num_labels)

    def _grams(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Ids of every token and every n-gram (n = 2..ngrams) of real tokens, with their mask."""
        ids, masks = [input_ids], [attention_mask.bool()]
        length = input_ids.shape[1]
        for n in range(2, self.ngrams + 1):
            if length < n:
                break
            key = input_ids[:, : length - n + 1].long()  # the n-gram's number in base vocab_size
            real = masks[0][:, : length - n + 1].clone()
            for j in range(1, n):
                key = key * self.vocab_size + input_ids[:, j : length - n + 1 + j]
                real &= masks[0][:, j : length - n + 1 + j]
            mixed = ((key + n) * _GOLDEN) >> 16  # the high bits of the product mix every input bit
            ids.append(self.vocab_size + torch.remainder(mixed, self.buckets))
            masks.append(real)
        return torch.cat(ids, dim=1), torch.cat(masks, dim=1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SequenceClassifierOutput:
        ids, mask = self._grams(input_ids, attention_mask)
        weights = mask.to(self.embed.weight.dtype)
        weights = weights / weights.sum(dim=1, keepdim=True).clamp(min=1)
        pooled = nn.functional.embedding_bag(ids, self.embed.weight, mode="sum", per_sample_weights=weights)
        return SequenceClassifierOutput(logits=self.out(self.drop(pooled)))


def build_text_model(family: str, settings: Mapping[str, Any], num_labels: int, vocab_size: int, pad_id: int = 0) -> nn.Module:
    """A randomly initialised model of ``family`` (one of :data:`FAMILIES`) with ``settings``
    (the trial's configuration; the keys of :data:`SETTINGS`)."""
    dim, dropout = int(settings["embedding_dim"]), float(settings["dropout"])
    if family == "textcnn":
        return TextCNN(vocab_size, num_labels, dim, int(settings["filters"]), parse_kernel_sizes(settings["kernel_sizes"]),
                       dropout, pad_id)
    if family == "fasttext":
        return FastText(vocab_size, num_labels, dim, int(settings["ngrams"]), int(settings["buckets"]), dropout)
    raise ValueError(f"unknown text model family {family!r} (expected one of {', '.join(FAMILIES)})")


def save_text_model(folder: Path, family: str, settings: Mapping[str, Any], state: Mapping[str, Any], num_labels: int,
                    vocab_size: int, pad_id: int, class_names: Sequence[str]) -> Path:
    """Write ``folder/model.pt``: the state dict with everything :func:`load_text_model` needs."""
    path = Path(folder) / "model.pt"
    torch.save({"family": family, "settings": {k: settings[k] for k in SETTINGS[family]}, "state_dict": dict(state),
                "num_labels": num_labels, "vocab_size": vocab_size, "pad_id": pad_id, "class_names": list(class_names)}, path)
    return path


def load_text_model(folder: Path) -> nn.Module:
    """The model saved by :func:`save_text_model` in ``folder``, in evaluation mode."""
    saved = torch.load(Path(folder) / "model.pt", map_location="cpu", weights_only=True)
    model = build_text_model(saved["family"], saved["settings"], saved["num_labels"], saved["vocab_size"], saved["pad_id"])
    model.load_state_dict(saved["state_dict"])
    return model.eval()

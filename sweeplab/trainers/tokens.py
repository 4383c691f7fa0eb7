"""Texts tokenised once per sweep and framed per batch: what the tasks with a text model share.

Tokenising is done once per tokenizer, without special tokens, up to :data:`TOKEN_CAP` tokens per
text; a trial then cuts each text to its own ``max_length`` and frames it as ``[CLS] text [SEP]``
padded to the longest text of the batch, not to a fixed length (news titles are under 32 tokens),
so ``max_length`` can be searched without tokenising again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sweeplab.trainers.backbones import BackboneError, chinese_tokenizer, load_tokenizer

__all__ = ["SCRATCH", "TOKEN_CAP", "TokenisedTexts", "batch_inputs", "frame_ids", "load_tokenizer_for", "tokenise"]

#: Tokens kept per text (BERT's 512 positions less [CLS] and [SEP]).
TOKEN_CAP = 510
#: The model name that means "a random model with the bert-base-chinese vocabulary".
SCRATCH = "scratch"


@dataclass(frozen=True)
class TokenisedTexts:
    """Token ids without special tokens, right-padded to the longest text (at most
    :data:`TOKEN_CAP`), with the true lengths."""

    ids: torch.Tensor
    lengths: torch.Tensor

    def __len__(self) -> int:
        return len(self.lengths)


def load_tokenizer_for(model: str) -> tuple[Any, str]:
    """The tokenizer of ``model`` (a name, a folder, or :data:`SCRATCH`) and a key that names it
    for the prepared-data cache."""
    if model == SCRATCH:
        return chinese_tokenizer(), "bert-base-chinese-vocab"
    source = str(Path(model).resolve()) if Path(model).exists() else model
    tokenizer = load_tokenizer(source, f"give a local directory or model={SCRATCH}")
    return tokenizer, f"{source}:{len(tokenizer)}"


#: Texts tokenised per call: large enough for a fast tokenizer's batching, small enough for the
#: progress bar to move.
_CHUNK = 4096


def tokenise(tokenizer: Any, texts: Sequence[str], advance: Callable[[int], None] | None = None) -> dict[str, torch.Tensor]:
    """``ids`` and ``lengths`` of every text (plain tensors, so the cache can store them);
    ``advance(n)`` is called after each chunk of ``n`` texts."""
    encoded: list[list[int]] = []
    for start in range(0, len(texts), _CHUNK):
        chunk = list(texts[start:start + _CHUNK])
        encoded += tokenizer(chunk, add_special_tokens=False, truncation=True, max_length=TOKEN_CAP)["input_ids"]
        if advance is not None:
            advance(len(chunk))
    width = max(1, max((len(ids) for ids in encoded), default=1))
    ids = torch.full((len(encoded), width), int(tokenizer.pad_token_id or 0), dtype=torch.int32)
    for row, seq in enumerate(encoded):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.int32)
    return {"ids": ids, "lengths": torch.tensor([len(s) for s in encoded], dtype=torch.int32)}


def frame_ids(tokenizer: Any) -> tuple[int, int, int]:
    """``(cls, sep, pad)`` token ids (bos/eos for tokenizers without [CLS]/[SEP])."""
    cls = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if cls is None or sep is None:
        raise BackboneError("the model's tokenizer has no [CLS]/[SEP] (or bos/eos) tokens to frame a text with")
    return int(cls), int(sep), int(tokenizer.pad_token_id or 0)


def batch_inputs(texts: TokenisedTexts, rows: torch.Tensor, max_length: int, cls: int, sep: int, pad: int) -> dict[str, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` of ``rows``: ``[CLS] text [SEP]``, each text cut to
    ``max_length - 2`` tokens, padded to the longest in the batch."""
    n = texts.lengths[rows].long().clamp(max=max_length - 2)
    width = int(n.max()) + 2
    body = texts.ids[rows, : width - 2].long()
    keep = torch.arange(width - 2)[None, :] < n[:, None]
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    input_ids[:, 0] = cls
    input_ids[:, 1 : width - 1] = torch.where(keep, body, torch.full_like(body, pad))
    input_ids[torch.arange(len(rows)), n + 1] = sep
    attention_mask = (torch.arange(width)[None, :] < (n + 2)[:, None]).long()
    return {"input_ids": input_ids, "attention_mask": attention_mask}

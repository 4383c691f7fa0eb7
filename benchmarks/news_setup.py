"""What the benchmarks that time ``news`` trials set up at run time, with no download: a random
BERT with the bert-base-chinese vocabulary, a THUCNews-titles folder cut to its first rows, and a
space file that fixes every parameter (each trial then trains the same configuration)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: ``base`` is BERT-base's size (BertConfig's defaults: 768 x 12 layers, 12 heads, 102 M
#: parameters with this vocabulary); ``small`` a 256 x 2 model for a CPU.
SIZES: dict[str, dict[str, int]] = {
    "base": {},
    "small": {"hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 1024},
}
SPLIT_FILES = ("train.txt", "dev.txt", "test.txt")


def write_random_bert(folder: Path, size: str, seed: int = 0) -> Path:
    """``BertModel(BertConfig(vocab_size=21128, ...))`` of ``size`` with the packaged vocabulary,
    saved in ``folder`` (``AutoModelForSequenceClassification.from_pretrained`` loads it, with a
    new classification head)."""
    import torch
    from transformers import BertConfig, BertModel
    from transformers.utils import logging as hf_logging

    from sweeplab.trainers.backbones import chinese_tokenizer

    hf_logging.disable_progress_bar()
    torch.manual_seed(seed)
    tokenizer = chinese_tokenizer()
    BertModel(BertConfig(vocab_size=len(tokenizer), **SIZES[size])).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def news_subset(source: Path, folder: Path, rows: Mapping[str, int | None]) -> Path:
    """``folder`` holding ``class.txt`` and the first ``rows[name]`` lines of each split file of
    a THUCNews-titles folder ``source`` (all of them where ``rows`` says ``None`` or names none;
    the file is left out where it says 0)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source / "class.txt", folder / "class.txt")
    for name in SPLIT_FILES:
        if (source / name).is_file() and rows.get(name, None) != 0:
            lines = (source / name).read_text(encoding="utf-8").splitlines(keepends=True)
            keep = rows.get(name)
            (folder / name).write_text("".join(lines if keep is None else lines[:keep]), encoding="utf-8")
    return folder


def fixed_space(path: Path, settings: Mapping[str, Any]) -> Path:
    """A space file whose ``[fixed]`` table holds ``settings`` and that searches nothing."""
    path.write_text("[fixed]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items()),
                    encoding="utf-8")
    return path

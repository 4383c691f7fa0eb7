"""Where a trial runs and at what precision, and giving its memory back when it ends."""

from __future__ import annotations

import contextlib
import gc
import random
from collections.abc import Iterator

import numpy as np
import torch

from sweeplab.errors import SweeplabError

__all__ = ["autocast", "freeze_long_lived", "memory_in_use", "pick_device", "release_memory", "seed_everything"]


def pick_device(spec: str = "auto") -> torch.device:
    """``auto`` is the first CUDA device when there is one, else the CPU."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise SweeplabError(f"device {spec!r} is not a torch device (expected auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SweeplabError(f"device {spec!r} asked for, but torch sees no CUDA device")
    return device


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Mixed precision through ``torch.autocast``: ``bf16`` or ``fp16`` on CUDA, ``bf16`` on CPU;
    ``fp32`` (and ``auto`` on CPU) runs unchanged; ``auto`` on CUDA is bf16 where supported."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp32":
        yield
        return
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None:
        raise SweeplabError(f"precision {precision!r}: expected auto, fp32, bf16 or fp16")
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def memory_in_use(device: torch.device) -> int:
    """Bytes of accelerator memory held by tensors (0 on the CPU)."""
    return int(torch.cuda.memory_allocated(device)) if device.type == "cuda" else 0


def freeze_long_lived() -> None:
    """Move every object alive now (imported libraries, the sweep's prepared data) out of the
    garbage collector's view. Called once before the first trial, so that the collection in
    :func:`release_memory` scans only what a trial created: a full collection over torch's and
    transformers' heap costs about 0.3 s, per trial."""
    gc.collect()
    gc.freeze()


def release_memory() -> None:
    """Drop unreachable tensors and return cached accelerator memory, so that the next trial
    starts from the same baseline (the lab report had to restart its kernel between runs)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

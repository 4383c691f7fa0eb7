"""Where a trial runs and at what precision, and giving its memory back when it ends."""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from sweeplab.errors import UsageError

__all__ = ["autocast", "compile_in_place", "device_label", "set_threads", "frozen_long_lived", "memory_now", "peak_memory", "pick_device",
           "release_memory", "reset_peak_memory"]


def pick_device(spec: str = "auto") -> torch.device:
    """``auto`` is the first CUDA device when there is one, else the CPU."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UsageError(f"device {spec!r} is not a torch device (expected auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {spec!r} asked for, but torch sees no CUDA device")
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
        raise UsageError(f"precision {precision!r}: expected auto, fp32, bf16 or fp16")
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def compile_in_place(modules: list[torch.nn.Module], enabled: bool) -> None:
    """``torch.compile`` each module in place (``Module.compile``) when ``enabled``
    (``sweep run --compile``): calling the module then runs the compiled forward, while its
    parameters, ``state_dict`` keys and ``save_pretrained`` stay those of the module, so
    checkpoints do not change. Compilation is lazy: it happens at the first forward pass, inside
    the trial's first round, so its cost counts in the trial's time. Shapes that change between
    batches (texts padded to each batch's longest) make one recompilation with dynamic shapes."""
    if enabled:
        for module in modules:
            module.compile()


_MIB = 2**20


def memory_now(device: torch.device) -> dict[str, float]:
    """Memory in use now, in MiB: ``memory_host_mb``, the process's resident set (Linux; read
    from ``/proc/self/statm``, absent elsewhere), and on CUDA ``memory_gpu_mb``, the bytes held
    by tensors (``torch.cuda.memory_allocated``, not the allocator's cache)."""
    figures: dict[str, float] = {}
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
        figures["memory_host_mb"] = resident_pages * os.sysconf("SC_PAGE_SIZE") / _MIB
    except (OSError, ValueError, IndexError):
        pass
    if device.type == "cuda":
        figures["memory_gpu_mb"] = torch.cuda.memory_allocated(device) / _MIB
    return figures


def reset_peak_memory(device: torch.device) -> None:
    """Start counting the peak GPU memory afresh (for :func:`peak_memory`); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict[str, float]:
    """``memory_gpu_peak_mb``: the most GPU memory tensors held since :func:`reset_peak_memory`
    (``torch.cuda.max_memory_allocated``), in MiB; empty on the CPU."""
    return {"memory_gpu_peak_mb": torch.cuda.max_memory_allocated(device) / _MIB} if device.type == "cuda" else {}


@contextlib.contextmanager
def frozen_long_lived() -> Iterator[None]:
    """Move every object alive now (imported libraries, the sweep's prepared data) out of the
    garbage collector's view for the length of the block, so that the collection in
    :func:`release_memory` scans only what a trial created (a full collection over torch's and
    transformers' heap costs about 0.3 s, per trial); they are back in its view when the block
    ends, however it ends, as a process that goes on after the sweep (a notebook) needs. When
    the process had already frozen objects itself (``gc.get_freeze_count()``), nothing is
    frozen: unfreezing at the end would take the process's own objects too."""
    if gc.get_freeze_count():
        yield
        return
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def release_memory() -> None:
    """Drop unreachable tensors and return cached accelerator memory, so that the next trial
    starts from the same baseline (the lab report had to restart its kernel between runs)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def device_label(device: torch.device) -> str:
    """The device a trial runs on, as its run's ``sweeplab.device`` tag says it: ``cpu``, or
    ``cuda:N`` with N the card as the machine numbers it (the entry of ``CUDA_VISIBLE_DEVICES``
    that the process sees as its device), so that the trials of workers on different cards,
    each of which sees its card as ``cuda:0``, are told apart."""
    if device.type != "cuda":
        return str(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    visible = [entry.strip() for entry in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if entry.strip()]
    return f"cuda:{visible[index]}" if index < len(visible) else f"cuda:{index}"


def set_threads(count: int) -> None:
    """Let torch use ``count`` CPU threads in this process (a ``--workers`` worker gets its share
    of the cores: several processes with every core each slow each other down)."""
    torch.set_num_threads(count)

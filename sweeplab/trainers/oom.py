"""Out-of-memory errors told apart from bugs: the accelerator's, and the host's."""

from __future__ import annotations

import torch

__all__ = ["out_of_memory"]

#: How PyTorch's CPU allocator words a failed allocation (a RuntimeError, not OutOfMemoryError).
_HOST_OOM = "can't allocate memory"


def out_of_memory(error: BaseException) -> str | None:
    """``"gpu"`` when ``error`` is a GPU allocation that failed (``torch.OutOfMemoryError``, or
    the CUDA runtime's own words in a plain RuntimeError), ``"host"`` when the host ran out
    (``MemoryError``, or the CPU allocator's RuntimeError), else ``None``."""
    text = str(error)
    if isinstance(error, torch.OutOfMemoryError) or "CUDA out of memory" in text:
        return "gpu"
    if isinstance(error, MemoryError) or _HOST_OOM in text:
        return "host"
    return None

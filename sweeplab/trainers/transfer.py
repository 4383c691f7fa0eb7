"""Host-to-device copies of a batch that do not make the host wait for the GPU.

A copy from ordinary (pageable) host memory to a GPU blocks the host until the copy is done,
and the copy waits behind the kernels already queued: each step would wait for the previous
one. A copy from page-locked (pinned) memory with ``non_blocking=True`` is queued like a kernel
and the host goes on building the next batch, as a ``DataLoader(pin_memory=True)`` would do.
The trainers' batches are cut from tensors prepared once per sweep (token ids, decoded images,
frozen features), so they are pinned here, batch by batch, rather than through a ``DataLoader``,
which would only add a collation per row; torch's pinned-memory cache reuses the buffers, and
keeps each one until the copy that reads it has run. On the CPU the tensors are returned as
they are (``Tensor.to`` of a tensor already there is free).

Constants a step needs on the device (an image model's per-channel mean and standard deviation)
are made there once per device (:func:`channel_constant`): ``torch.tensor(values, device=cuda)``
in a step is a copy from pageable memory, which waits for the GPU.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import torch

__all__ = ["channel_constant", "normalise_channels", "to_device", "to_device_all", "trimmed_to_device"]


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``; to a CUDA device from pinned memory, without waiting."""
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    if not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def to_device_all(tensors: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Every tensor of a batch (``input_ids``, ``attention_mask``...) on ``device`` (:func:`to_device`)."""
    return {name: to_device(tensor, device) for name, tensor in tensors.items()}


def trimmed_to_device(input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded token ids and their mask, cut to the batch's longest text (the largest row sum
    of ``attention_mask``) and on ``device`` (:func:`to_device`). The width is read from the mask
    while it is still on the host, where reading it waits for nothing."""
    width = int(attention_mask.sum(1).max())
    return to_device(input_ids[:, :width], device), to_device(attention_mask[:, :width], device)


@functools.lru_cache(maxsize=64)
def channel_constant(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """``values`` as a ``[1, C, 1, 1]`` float tensor on ``device``, made once per device and values
    (an ordinary tensor even when first asked for under ``torch.inference_mode``, so that training
    may use it later)."""
    with torch.inference_mode(False):
        return torch.tensor(values, dtype=torch.float32).view(1, -1, 1, 1).to(device)


def normalise_channels(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x - mean) / std`` per channel of a ``[B, C, H, W]`` batch, the constants on ``x``'s device."""
    return (x - channel_constant(tuple(mean), x.device)) / channel_constant(tuple(std), x.device)

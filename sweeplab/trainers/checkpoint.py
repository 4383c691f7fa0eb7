"""The default checkpoint of a trial: ``model.pt``, the state dict kept at the best evaluation
with what is needed to read it back (its config, its task and its best step)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["save_model_pt"]


def save_model_pt(state: Mapping[str, Any], config: Mapping[str, Any], task: str, best_step: float, path: Path) -> None:
    """Write ``state`` to ``path`` with ``torch.save`` (as ``{"state_dict", "config", "task",
    "best_step"}``). A state that cannot be pickled raises what ``pickle`` raises."""
    torch.save({"state_dict": state, "config": dict(config), "task": task, "best_step": best_step}, path)

"""A Lightning module of scikit-learn's handwritten digits, swept by sweeplab.

    pip install "sweeplab[lightning]"
    sweep run examples/lightning_digits/lightning_digits.py:fit --trials 20
    sweep best --task digits-lightning

The module is a plain ``LightningModule``; the Trainer gets one callback more,
:class:`~sweeplab.integrations.lightning.ReportCallback`, which hands each epoch's validation to
``report``: the curves go to MLflow, Optuna may prune a trial that is far behind, the module's
state at its best epoch becomes the trial's checkpoint, and a pruned trial (or one past its
overfitting onset) ends through ``trainer.should_stop``, as ``EarlyStopping`` would end it. The
Trainer keeps no logs or checkpoints of its own (``logger=False``, ``enable_checkpointing=False``):
the trial's MLflow run already has both. When sweeplab saves the trial's resume state (every
``--checkpoint-minutes``, and at a stop signal) the callback hands over Lightning's checkpoint,
with the random generators' states; a retry of a trial killed, preempted or stopped gets it back
as ``callback.resume_from``, and ``trainer.fit(..., ckpt_path=...)`` goes on from there: from an
epoch's end with the curve it would have had uninterrupted, from a stop within an epoch with the
batches that epoch has left drawn afresh (Lightning's resume of a plain ``DataLoader``).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import lightning
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import sweeplab
from sweeplab.integrations.lightning import ReportCallback

# Lightning's banner at every fit ("GPU available...", tips) would repeat once a trial in the sweep's output.
logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
# Lightning 2.6 still calls a torch pytree API that torch 2.14 deprecates, once per trial: not this code's.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """8x8 digit images scaled to [0, 1], split 75/25 with each digit in proportion (the same
    split in every trial, so that trials are compared on one validation set)."""
    features, labels = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(features / 16.0, labels, test_size=0.25, random_state=0,
                                                      stratify=labels)
    as_x = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    as_y = lambda a: torch.tensor(a, dtype=torch.long)  # noqa: E731
    return as_x(x_train), as_y(y_train), as_x(x_val), as_y(y_val)


class DigitsModule(lightning.LightningModule):
    """An MLP of ``layers`` hidden layers of ``hidden`` units, ReLU and dropout between them,
    trained with AdamW; it logs ``train_loss`` (the epoch's mean), ``val_loss`` and
    ``val_accuracy``, the names of the trial's curves in MLflow."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        width = 64
        for _ in range(config["layers"]):
            layers += [nn.Linear(width, config["hidden"]), nn.ReLU(), nn.Dropout(config["dropout"])]
            width = config["hidden"]
        self.net = nn.Sequential(*layers, nn.Linear(width, 10))
        self.loss_fn = nn.CrossEntropyLoss()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = self.loss_fn(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", self.loss_fn(logits, y), batch_size=len(y))
        self.log("val_accuracy", (logits.argmax(1) == y).float().mean(), batch_size=len(y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.config["lr"], weight_decay=self.config["weight_decay"])


@sweeplab.trainer(name="digits-lightning", metric="val_accuracy", space="lightning_digits.toml")
def fit(config: dict[str, Any], report: Any) -> None:
    """Train one configuration with a Lightning Trainer, reporting each epoch's validation; a retry
    of a stopped trial goes on from the checkpoint the callback handed over."""
    x_train, y_train, x_val, y_val = _data()
    train = DataLoader(TensorDataset(x_train, y_train), batch_size=config["batch_size"], shuffle=True)
    val = DataLoader(TensorDataset(x_val, y_val), batch_size=len(y_val))  # one batch: the metrics are exact
    callback = ReportCallback(report, monitor="val_accuracy")
    trainer = lightning.Trainer(
        max_epochs=config["epochs"],
        devices=1,  # a trial is one process: not a distributed run on every GPU in sight
        callbacks=[callback],
        logger=False,  # the trial's MLflow run has the curves
        enable_checkpointing=False,  # and the best epoch's state, as its checkpoint
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(DigitsModule(config), train, val, ckpt_path=callback.resume_from)  # None on a first attempt

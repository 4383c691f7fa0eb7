"""A small torch classifier of scikit-learn's handwritten digits, swept by sweeplab.

    sweep run examples/digits/digits.py:fit --trials 20
    sweep best --task digits-mlp

The function is all sweeplab needs: it reads its data, builds the model a trial's ``config``
describes, trains it and calls ``report`` once an epoch. ``report`` logs the curves to MLflow,
lets Optuna prune a trial that is far behind, keeps the state of the best epoch as the trial's
checkpoint and answers ``True`` when the trial should stop (pruned, or past its overfitting
onset). It also hands ``report`` its resume state (model, optimizer, torch's random state), so
that a trial killed, preempted or stopped by a signal goes on, when it is retried, from the epoch
after the last one saved (``report.resumed``), with the curve it would have had uninterrupted.
"""

from __future__ import annotations

from typing import Any

import torch
from sklearn.datasets import load_digits
from sklearn.metrics import accuracy_score
from sklearn.model_selection import train_test_split
from torch import nn

import sweeplab


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """8x8 digit images scaled to [0, 1], split 75/25 with each digit in proportion (the same
    split in every trial, so that trials are compared on one validation set)."""
    features, labels = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(features / 16.0, labels, test_size=0.25, random_state=0,
                                                      stratify=labels)
    as_x = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    as_y = lambda a: torch.tensor(a, dtype=torch.long)  # noqa: E731
    return as_x(x_train), as_y(y_train), as_x(x_val), as_y(y_val)


def _model(config: dict[str, Any]) -> nn.Module:
    """An MLP of ``layers`` hidden layers of ``hidden`` units, ReLU and dropout between them."""
    layers: list[nn.Module] = []
    width = 64
    for _ in range(config["layers"]):
        layers += [nn.Linear(width, config["hidden"]), nn.ReLU(), nn.Dropout(config["dropout"])]
        width = config["hidden"]
    return nn.Sequential(*layers, nn.Linear(width, 10))


@sweeplab.trainer(name="digits-mlp", metric="val_accuracy", space="digits.toml")
def fit(config: dict[str, Any], report: Any) -> None:
    """Train one configuration, reporting validation loss and accuracy after every epoch; a retry
    of a stopped trial starts at the epoch after its resume state."""
    x_train, y_train, x_val, y_val = _data()
    model = _model(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    loss_fn = nn.CrossEntropyLoss()
    start = 1
    if report.resumed is not None:  # a retry of this trial: go on from the state handed over below
        model.load_state_dict(report.resumed.state["model"])
        optimizer.load_state_dict(report.resumed.state["optimizer"])
        torch.set_rng_state(report.resumed.state["rng"])  # the shuffles and dropout masks of an unstopped run
        start = int(report.resumed.step) + 1

    def resume_state() -> dict[str, Any]:  # built only when sweeplab saves it (every --checkpoint-minutes, at a stop)
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()}

    for epoch in range(start, config["epochs"] + 1):
        model.train()
        total = 0.0
        for batch in torch.randperm(len(x_train)).split(config["batch_size"]):
            optimizer.zero_grad()
            loss = loss_fn(model(x_train[batch]), y_train[batch])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        model.eval()
        with torch.no_grad():
            logits = model(x_val)
        metrics = {
            "train_loss": total / len(x_train),
            "val_loss": loss_fn(logits, y_val).item(),
            "val_accuracy": accuracy_score(y_val.numpy(), logits.argmax(1).numpy()),
        }
        if report(epoch, metrics, state=model.state_dict(), resume=resume_state):
            break

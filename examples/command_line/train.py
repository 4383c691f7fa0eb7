"""A logistic-regression classifier in plain Python, swept by sweeplab as a command.

    sweep run --space examples/command_line/train.toml --metric val_accuracy -- \
        python examples/command_line/train.py --lr {lr} --epochs {epochs} --batch-size {batch_size} --l2 {l2}

It knows nothing of sweeplab: it takes its values as arguments and prints one line per epoch,
``epoch=N train_loss=... val_loss=... val_accuracy=...``, which sweeplab reads as the trial's
evaluations (the same lines a program in any language can print). Its data are two noisy
Gaussian classes in ``--features`` dimensions, drawn from ``--seed``: the same in every trial.
"""

from __future__ import annotations

import argparse
import math
import random


def _data(features: int, rows: int, seed: int) -> list[tuple[list[float], int]]:
    """``rows`` points of two classes whose means differ in the first three features only."""
    draw = random.Random(seed)
    points = []
    for _ in range(rows):
        label = draw.random() < 0.5
        x = [draw.gauss(0.8 if label and i < 3 else 0.0, 1.0) for i in range(features)]
        points.append((x, int(label)))
    return points


def _loss_and_accuracy(weights: list[float], bias: float, points: list[tuple[list[float], int]]) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of the model on ``points``."""
    loss = correct = 0.0
    for x, y in points:
        z = bias + sum(w * v for w, v in zip(weights, x))
        p = 1.0 / (1.0 + math.exp(-max(min(z, 30.0), -30.0)))
        loss -= math.log(p if y else 1.0 - p)
        correct += (p >= 0.5) == bool(y)
    return loss / len(points), correct / len(points)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--l2", type=float, default=0.0)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    points = _data(args.features, 400, args.seed)
    train, val = points[:300], points[300:]
    weights, bias = [0.0] * args.features, 0.0
    shuffle = random.Random(args.seed + 1)
    for epoch in range(1, args.epochs + 1):
        shuffle.shuffle(train)
        for start in range(0, len(train), args.batch_size):
            batch = train[start:start + args.batch_size]
            grad_w, grad_b = [0.0] * args.features, 0.0
            for x, y in batch:
                z = bias + sum(w * v for w, v in zip(weights, x))
                error = 1.0 / (1.0 + math.exp(-max(min(z, 30.0), -30.0))) - y
                grad_w = [g + error * v for g, v in zip(grad_w, x)]
                grad_b += error
            weights = [w - args.lr * (g / len(batch) + args.l2 * w) for w, g in zip(weights, grad_w)]
            bias -= args.lr * grad_b / len(batch)
        train_loss, _ = _loss_and_accuracy(weights, bias, train)
        val_loss, val_accuracy = _loss_and_accuracy(weights, bias, val)
        print(f"epoch={epoch} train_loss={train_loss:.5f} val_loss={val_loss:.5f} val_accuracy={val_accuracy:.4f}",
              flush=True)


if __name__ == "__main__":
    main()

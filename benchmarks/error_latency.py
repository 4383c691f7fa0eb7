"""How long ``sweep run`` takes to refuse input that needs no data, no store and no model: the
seconds from the command's start to its one-line error (exit 2), for each kind of mistake, beside
the same interpreter doing nothing (``python -c pass``) and Typer's own parse error (a misspelt
flag), measured in turn in one run. The goal (issue 23): under 1 s on a quiet machine, checked
before torch, transformers or a task's trainer is imported.

    python benchmarks/error_latency.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: Each mistake: a name and the ``sweep`` arguments that make it.
MISTAKES = {
    "unknown task": ["run", "sentimnt"],
    "--trials 0": ["run", "sentiment", "--trials", "0"],
    "--set lr=abc": ["run", "sentiment", "--set", "lr=abc"],
    "a missing --space file": ["run", "sentiment", "--space", "nowhere.toml"],
    "a space file with a bad range": ["run", "sentiment", "--space", "{bad_space}"],
    "a trainer file that is missing": ["run", "nowhere.py:fit"],
    "an unwritable --store-dir": ["run", "sentiment", "--store-dir", "/proc/sweeplab"],
    "a misspelt --metric": ["run", "sentiment", "--metric", "val_acuracy"],
    "report --out in a missing folder": ["report", "--out", "/nowhere/page.html"],
}
BASELINES = {"python -c pass": [sys.executable, "-c", "pass"], "Typer's parse error (--trails 3)": None}


def _time(command: list[str], cwd: Path) -> tuple[float, int, str]:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)
    return time.perf_counter() - start, done.returncode, (done.stderr or done.stdout).strip().splitlines()[-1:][0] if (done.stderr or done.stdout).strip() else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sweep", default=str(Path(sys.executable).with_name("sweep")))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        cwd = Path(folder)
        (cwd / "bad.toml").write_text("[search.lr]\nlow = 1.0\nhigh = 0.1\n", encoding="utf-8")
        commands = {name: [args.sweep, *(a.replace("{bad_space}", "bad.toml") for a in argv)] for name, argv in MISTAKES.items()}
        commands["python -c pass"] = BASELINES["python -c pass"]
        commands["Typer's parse error (--trails 3)"] = [args.sweep, "run", "sentiment", "--trails", "3"]
        seconds: dict[str, list[float]] = {name: [] for name in commands}
        said: dict[str, tuple[int, str]] = {}
        for _ in range(args.repeats):  # in turn, so that a machine's drift touches every command alike
            for name, command in commands.items():
                took, code, line = _time(command, cwd)
                seconds[name].append(took)
                said[name] = (code, line)
    base = statistics.median(seconds["python -c pass"])
    print(f"{'input':36} {'median s':>9} {'max s':>7} {'x python':>9}  exit  what it said")
    for name, values in seconds.items():
        code, line = said[name]
        print(f"{name:36} {statistics.median(values):9.2f} {max(values):7.2f} {statistics.median(values) / base:9.1f}  "
              f"{code:4}  {line[:90]}")


if __name__ == "__main__":
    main()

"""What a login costs a sweep that tracks to ``sweep server``: the same command sweep against a
server without credentials, with them and MLflow's password cache (sweeplab's default), and with
them without the cache (``auth_cache_ttl_seconds = 0``, MLflow's default), in one run, repeated.

Each sweep is ``examples/command_line/train.py`` (the standard library alone: the time is the
tracking's) for ``--trials`` trials of ``--epochs`` epochs, a study of its own each time. Prints
each server's median wall time and its ratio to the server without a login.

    python benchmarks/login_cost.py --trials 3 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from sweeplab.tracker import access

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "command_line"
PASSWORD = "benchmark-password-1"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _server(folder: Path, credentials: Path | None, cache_seconds: int) -> tuple[subprocess.Popen, str]:
    """``sweep server`` on 127.0.0.1 in ``folder``, with a login when given ``credentials``."""
    port = _free_port()
    env = {**os.environ, "SWEEPLAB_BENCH_AUTH_CACHE": str(cache_seconds)}
    command = [sys.executable, "-c", "import sys; from sweeplab.tracker import access; "
               "access.AUTH_CACHE_SECONDS = int(__import__('os').environ['SWEEPLAB_BENCH_AUTH_CACHE']); "
               "from sweeplab.cli import main; sys.argv = ['sweep', *sys.argv[1:]]; main()",
               "server", "--store-dir", str(folder), "--port", str(port),
               *(["--credentials", str(credentials)] if credentials else [])]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                               start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                return process, uri
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the server in {folder} did not answer")


def _sweep(uri: str, credentials: Path | None, trials: int, epochs: int, study: str, folder: Path) -> float:
    command = [sys.executable, "-m", "sweeplab", "run", "--tracking-uri", uri, "--store-dir", str(folder / "local"),
               "--space", str(EXAMPLE / "train.toml"), "--trials", str(trials), "--sampler", "random", "--study", study,
               "--no-plots", *(["--credentials", str(credentials)] if credentials else []), "--",
               sys.executable, str(EXAMPLE / "train.py"), "--lr", "{lr}", "--epochs", str(epochs)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING_", access.CREDENTIALS_ENV))}
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        credentials = folder / "credentials"
        credentials.write_text(f"bench:{PASSWORD}\n")
        credentials.chmod(0o600)
        setups = {"no login": (None, 0), "login, password cache (default)": (credentials, access.AUTH_CACHE_SECONDS),
                  "login, no cache (MLflow's default)": (credentials, 0)}
        servers = {name: _server(folder / f"server-{i}", creds, cache) for i, (name, (creds, cache)) in enumerate(setups.items())}
        try:
            times: dict[str, list[float]] = {name: [] for name in setups}
            for repeat in range(args.repeats):  # interleaved: the machine's load falls on all alike
                for name, (creds, _) in setups.items():
                    times[name].append(_sweep(servers[name][1], creds, args.trials, args.epochs, f"r{repeat}", folder))
        finally:
            for process, _ in servers.values():
                os.killpg(process.pid, signal.SIGTERM)
    base = statistics.median(times["no login"])
    print(f"{args.trials} trials x {args.epochs} epochs, {args.repeats} repeats, median wall time:")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:36s} {median:6.1f} s  {median / base:4.2f}x")


if __name__ == "__main__":
    main()

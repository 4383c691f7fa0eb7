"""Any program as a task: ``sweep run --space my.toml -- python train.py --lr {lr}`` runs one
process per trial.

Each ``{name}`` in the command is replaced by the trial's value of ``name`` (a name the space and
the defaults lack is refused before the first trial); the trial's values are also given whole, as
a JSON object, in ``SWEEPLAB_TRIAL_CONFIG``. The program reports its evaluations in one of two
ways:

* with :func:`sweeplab.trial.report` (Python), over a Unix socket the trial listens on
  (``SWEEPLAB_TRIAL_SOCKET``): the answer tells the program to stop (pruned, past its overfitting
  onset, out of the sweep's time), and a ``checkpoint=`` file or folder is copied at each new best
  evaluation, the trial's checkpoint;
* by printing lines of ``name=value`` pairs, one of them ``step=`` or ``epoch=`` (Katib's
  metrics format), from any language: ``epoch=3 train_loss=0.52 val_loss=0.61 val_accuracy=0.83``.
  Every token of such a line is a pair with a number; any other line is output, not a report.
  Such a program cannot be answered: when its trial should stop, it is ended.

A program that goes on after it was told to stop is sent ``SIGTERM`` after
:data:`GRACE_SECONDS`, and ``SIGKILL`` after as many more; a line-reporting one is sent ``SIGTERM``
at once. The program runs in a process group of its own, so that a launcher's children
(``torchrun``'s ranks) are ended with it. A stop signal to the sweep is passed on to the program
as ``SIGTERM`` (it may save its own state), with the same grace, and the trial is retried.

A long trial survives a kill, a preemption or a stop signal when the program keeps its own state
in the trial's folder (``SWEEPLAB_TRIAL_FOLDER``, :func:`sweeplab.trial.folder`; kept across the
trial's attempts, deleted once it has ended) and reports with ``saved=True``: each such report
saves the curve up to it as the trial's resume state, and a retry runs the program again with
``SWEEPLAB_RESUMED_STEP`` (:func:`sweeplab.trial.resumed`) and that curve already recorded. A
program that saves nothing is run again from its start.

Its output (stdout and stderr together) is the trial's artifact ``command/output.log``; an exit
status other than 0 fails the trial, its reason the status and the output's last lines.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import json
import math
import os
import re
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from sweeplab.core import FitResult, Loaded, Reporter, Task, TrialEnv, evaluations_per_epoch, stopping
from sweeplab.errors import UsageError
from sweeplab.trainers.loop import Progress
from sweeplab.trial import CONFIG_ENV, FOLDER_ENV, RESUMED_ENV, SOCKET_ENV

__all__ = ["COMMAND_PREFIX", "CommandFailed", "GRACE_SECONDS", "check_command", "command_name", "command_of_spec",
           "command_spec", "command_task", "fields", "line_report"]

#: How a command is written where a task name goes (``SweepOptions.task``, worker options):
#: this prefix and the command, quoted as a shell would.
COMMAND_PREFIX = "-- "
#: Seconds a program is given to end on its own after it was told to stop, and after ``SIGTERM``.
GRACE_SECONDS = 10.0
#: Lines of output kept for the reason of a failed trial.
TAIL_LINES = 3
#: The metric a command's trial is judged by unless ``--metric`` names another.
DEFAULT_METRIC = "val_loss"

_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PAIR = re.compile(r"([A-Za-z_][A-Za-z0-9_.\-/]*)=([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|inf|nan))",
                   re.IGNORECASE)
_SCRIPT_SUFFIXES = (".py", ".sh", ".R", ".jl", ".pl", ".rb", ".js")


class CommandFailed(RuntimeError):
    """The trial's program ended with an exit ``status`` other than 0 (negative: killed by that
    signal); ``tail`` is its output's last lines."""

    def __init__(self, program: str, status: int, tail: Sequence[str]) -> None:
        self.program, self.status, self.tail = program, status, tuple(tail)
        how = f"was killed by {_signal_name(-status)}" if status < 0 else f"exited with status {status}"
        said = f"; its last lines: {' | '.join(self.tail)}" if self.tail else "; it printed nothing"
        super().__init__(f"{program} {how}{said}")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def command_spec(command: Sequence[str]) -> str:
    """The task name that stands for ``command`` (see :data:`COMMAND_PREFIX`)."""
    return COMMAND_PREFIX + shlex.join(command)


def command_of_spec(spec: str) -> list[str] | None:
    """The command a task name stands for; ``None`` for a name that is not a command."""
    return shlex.split(spec[len(COMMAND_PREFIX):]) if spec.startswith(COMMAND_PREFIX) else None


def fields(command: Sequence[str]) -> frozenset[str]:
    """The names of the ``{name}`` fields in ``command``."""
    return frozenset(name for part in command for name in _FIELD.findall(part))


def filled(command: Sequence[str], config: Mapping[str, Any]) -> list[str]:
    """``command`` with each ``{name}`` replaced by ``config[name]``; other braces are kept."""
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        return str(config[name]) if name in config else match.group(0)

    return [_FIELD.sub(value, part) for part in command]


def command_name(command: Sequence[str]) -> str:
    """The task name of a command, as ``sweep best --task`` takes it: the name of the script it
    runs (``train.py`` of ``python train.py`` or ``torchrun --nproc-per-node 2 train.py``), the
    module of ``python -m pkg.train``, else the program's name."""
    for index, part in enumerate(command[1:], start=1):
        if part == "-m" and index + 1 < len(command):
            return command[index + 1]
        if not part.startswith("-") and part.endswith(_SCRIPT_SUFFIXES) and "{" not in part:
            return Path(part).name
    return Path(command[0]).name


def check_command(command: Sequence[str]) -> None:
    """Refuse, with one line, a command whose program is not found or whose script is not a file."""
    if not command:
        raise UsageError("`sweep run --` needs a command after the --, e.g. sweep run --space my.toml -- python train.py --lr {lr}")
    program = command[0]
    if shutil.which(program) is None:
        where = "not an executable file" if os.sep in program else "not found on PATH"
        raise UsageError(f"{program}: command {where} (the program of `sweep run -- {shlex.join(command)}`)")
    for part in command[1:]:
        if part.startswith("-") or "{" in part or not part.endswith(_SCRIPT_SUFFIXES):
            continue
        if not Path(part).is_file():
            raise UsageError(f"{part}: no such file (the script of `sweep run -- {shlex.join(command)}`)")
        break


def line_report(line: str) -> tuple[float, dict[str, float]] | None:
    """The evaluation a printed line reports: its ``step`` (or ``epoch``) and metrics; ``None``
    for a line that is not made only of ``name=number`` pairs with a step and a metric."""
    tokens = line.split()
    if not tokens:
        return None
    values: dict[str, float] = {}
    for token in tokens:
        match = _PAIR.fullmatch(token)
        if match is None:
            return None
        values[match.group(1)] = float(match.group(2))
    step = values.pop("step", None)
    epoch = values.pop("epoch", None)
    at = step if step is not None else epoch
    if at is None or not values or not math.isfinite(at):
        return None
    return at, values


_kept_root: Path | None = None


def _kept_folder() -> Path:
    """This process's folder of checkpoint copies (one trial's at a time), removed at exit."""
    global _kept_root
    if _kept_root is None:
        _kept_root = Path(tempfile.mkdtemp(prefix="sweeplab-checkpoints-"))
        atexit.register(shutil.rmtree, _kept_root, True)
    for old in _kept_root.iterdir():  # an earlier trial's: its artifacts are logged
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
    return _kept_root


def _copy_of(source: str, kept: Path) -> Callable[[], dict[str, str]]:
    """What keeps the checkpoint ``source`` at a new best: a copy in ``kept`` (replacing the
    previous best's), since the program may write the next checkpoint over the same path."""

    def copy() -> dict[str, str]:
        path = Path(source)
        target = kept / "best"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        if path.is_dir():
            shutil.copytree(path, target / path.name)
        else:
            shutil.copy2(path, target / path.name)
        return {"path": str(target / path.name)}

    return copy


def _save_checkpoint(loaded: Loaded, config: Mapping[str, Any], state: Mapping[str, Any], folder: Path) -> None:
    """Put the best evaluation's checkpoint copy in ``folder`` (the run's ``checkpoint/``)."""
    path = Path(state["path"])
    if path.is_dir():
        shutil.copytree(path, folder / path.name)
    else:
        shutil.copy2(path, folder / path.name)


class _Program:
    """One trial's running program: its process group, its output and the socket it reports on;
    ``own`` the folder its attempts share, ``resumed`` the step an earlier attempt saved."""

    def __init__(self, command: Sequence[str], config: Mapping[str, Any], folder: Path, own: Path,
                 resumed: float | None) -> None:
        self.name = command[0]
        self.log_path = folder / "output.log"
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(folder / "trial.sock"))
        self.listener.listen()
        self.listener.setblocking(False)
        env = {**os.environ, CONFIG_ENV: json.dumps(dict(config), default=str), SOCKET_ENV: str(folder / "trial.sock"),
               FOLDER_ENV: str(own), "PYTHONUNBUFFERED": "1"}
        env.pop(RESUMED_ENV, None)
        if resumed is not None:
            env[RESUMED_ENV] = f"{resumed:g}"
        self.log = self.log_path.open("wb")
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, "accept")
        self.selector.register(self.process.stdout, selectors.EVENT_READ, "output")  # type: ignore[arg-type]
        self.partial = b""
        self.output_open = True
        self.told_to_stop_at: float | None = None  # when the program was told to stop (or ended)
        self.terminated_at: float | None = None
        self.ended_by_sweep = False

    def lines(self, timeout: float) -> Iterator[tuple[str, Any, str]]:
        """What arrived within ``timeout`` seconds: ``("output", None, line)`` for a line of
        output, ``("report", connection, line)`` for a line on a reporting connection."""
        for key, _ in self.selector.select(timeout):
            if key.data == "accept":
                with contextlib.suppress(BlockingIOError):
                    connection, _ = self.listener.accept()
                    self.selector.register(connection, selectors.EVENT_READ, [b""])
            elif key.data == "output":
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    self.selector.unregister(key.fileobj)
                    self.output_open = False
                    continue
                self.log.write(chunk)
                *complete, self.partial = (self.partial + chunk).split(b"\n")
                for raw in complete:
                    line = raw.decode("utf-8", "replace").rstrip("\r")
                    if line.strip():
                        self.tail.append(line.strip())
                    yield "output", None, line
            else:
                connection = key.fileobj
                try:
                    chunk = connection.recv(65536)  # type: ignore[union-attr]
                except OSError:  # the program was ended mid-report
                    chunk = b""
                if not chunk:
                    self.selector.unregister(connection)
                    connection.close()  # type: ignore[union-attr]
                    continue
                *complete, key.data[0] = (key.data[0] + chunk).split(b"\n")
                for raw in complete:
                    yield "report", connection, raw.decode("utf-8")

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    def stop(self) -> None:
        """The program is to stop: ended by ``SIGTERM`` after the grace period (see :meth:`tick`)."""
        if self.told_to_stop_at is None:
            self.told_to_stop_at = time.monotonic()
        self.ended_by_sweep = True

    def end_now(self) -> None:
        """``SIGTERM`` now, ``SIGKILL`` after the grace period (see :meth:`tick`)."""
        self.stop()
        if self.terminated_at is None:
            self.signal(signal.SIGTERM)
            self.terminated_at = time.monotonic()

    def tick(self) -> None:
        """Escalate a stop the program has not answered by ending: ``SIGTERM``, then ``SIGKILL``."""
        now = time.monotonic()
        if self.terminated_at is not None:
            if now - self.terminated_at >= GRACE_SECONDS:
                self.signal(signal.SIGKILL)
        elif self.told_to_stop_at is not None and now - self.told_to_stop_at >= GRACE_SECONDS:
            self.end_now()

    def finished(self) -> bool:
        """Whether the program has ended and its output is read to its end."""
        return self.process.poll() is not None and not self.output_open

    def close(self) -> None:
        """End whatever of the program's process group still runs (``SIGTERM``, ``SIGKILL`` after
        the grace period) and release the socket and the log."""
        try:
            if self.process.poll() is None:
                self.signal(signal.SIGTERM)
                try:
                    self.process.wait(GRACE_SECONDS)
                except subprocess.TimeoutExpired:
                    pass
            self.signal(signal.SIGKILL)  # the group's other processes (a launcher's ranks)
            self.process.wait()
            drained_by = time.monotonic() + _DRAIN_SECONDS
            while self.output_open and time.monotonic() < drained_by:  # its last words, into the log
                for _ in self.lines(_POLL_SECONDS):
                    pass
        finally:
            for key in list(self.selector.get_map().values()):
                if key.data not in ("accept", "output"):
                    key.fileobj.close()  # type: ignore[union-attr]
            self.selector.close()
            self.listener.close()
            if self.process.stdout is not None:
                self.process.stdout.close()
            self.log.close()


#: Seconds between two looks at the program, a stop signal and the grace period.
_POLL_SECONDS = 0.2
#: Seconds the program's output may stay open after it ended (its children still writing).
_DRAIN_SECONDS = 5.0


def _follow(program: _Program, progress: Progress, kept: Path) -> None:
    """Hear the program's reports until it ends, answering each; end it when its trial is to stop."""
    ended_at: float | None = None
    while not program.finished():
        if stopping.requested() is not None and program.terminated_at is None:
            stopping.answer()  # the program is told here; its grace period is this module's
            program.end_now()
        for source, connection, line in program.lines(_POLL_SECONDS):
            if source == "output":
                reported = line_report(line)
                if reported is not None and _hear(progress, program, *reported, None, kept):
                    program.end_now()
                continue
            message = json.loads(line)
            stop = _hear(progress, program, message["step"], message["metrics"], message.get("checkpoint"), kept,
                         bool(message.get("saved")))
            with contextlib.suppress(OSError):  # a program that stopped listening
                connection.sendall((json.dumps({"stop": stop}) + "\n").encode("utf-8"))
            if stop:
                program.stop()
        program.tick()
        if program.process.poll() is not None:
            ended_at = ended_at or time.monotonic()
            if time.monotonic() - ended_at >= _DRAIN_SECONDS:
                break
    stopping.check()  # a stop signal: the trial is interrupted (and retried)


def _hear(progress: Progress, program: _Program, step: float, metrics: Mapping[str, float], checkpoint: str | None,
          kept: Path, saved: bool = False) -> bool:
    """One evaluation of the program; whether its trial is to stop. A report after it was told to
    stop ends it (the program ignores the answer). ``saved``: the program's state as of this
    evaluation is in the trial's folder, so the curve up to here is saved as the trial's resume
    state, every time (the program's state and the curve must stand at the same step), also when
    the report ends in a stop signal."""
    if progress.stopped or program.ended_by_sweep:
        program.end_now()
        return True
    state = _copy_of(checkpoint, kept) if checkpoint else None
    try:
        stop = progress.report(step, metrics, state=state)
    except stopping.StoppedAtStep:
        if saved:
            progress.save_resume_state({"step": step})
        raise
    if saved:
        progress.save_resume_state({"step": step})
    return stop


def _fit(command: Sequence[str], loaded: Loaded, config: Mapping[str, Any], env: TrialEnv,
         reporter: Reporter) -> FitResult:
    """One trial: run the command with the trial's values, hear its reports, judge its end."""
    progress = Progress(reporter, env.metric, env.direction, env.early_stop, env.keep_state, env.resume)
    reporter.on_start(evaluations_per_epoch(config) or 0)
    progress.take_resume_state()
    kept = _kept_folder()
    argv = filled(command, config)
    with tempfile.TemporaryDirectory(prefix="sweeplab-trial-") as folder:  # a short path: a socket's is limited
        shared = getattr(env.resume.store, "folder", None) if env.resume is not None else None
        own = Path(shared) if shared is not None else Path(folder) / "own"  # a trial without a resume store: this attempt's
        own.mkdir(parents=True, exist_ok=True)
        resumed = progress.resumed.step if progress.resumed is not None else None
        program = _Program(argv, config, Path(folder), own, resumed)
        try:
            _follow(program, progress, kept)
        finally:
            program.close()
            attach = getattr(reporter, "attach", None)
            if attach is not None:
                attach(program.log_path, "command")
        status = program.process.returncode
        if status != 0 and not program.ended_by_sweep:
            raise CommandFailed(shlex.join(argv[:2]), status, list(program.tail))
    if not progress.result.history:
        raise RuntimeError(f"{shlex.join(argv[:2])} ended without reporting an evaluation: call "
                           "sweeplab.trial.report(step, metrics), or print lines such as "
                           f"`epoch=1 val_loss=0.52 {progress.metric}=0.8`")
    return progress.result


def command_task(command: Sequence[str]) -> Task:
    """The task that runs ``command`` once per trial (see the module docstring)."""
    name = command_name(command)
    return Task(
        name=name,
        summary=f"the command {shlex.join(command)}",
        metric=DEFAULT_METRIC,
        direction="minimize",
        defaults={},
        default_space="",
        sample_data=None,
        load=lambda data_dir, seed, val_fraction, settings: Loaded(payload=None, reports=(), fingerprint=name),
        prepare=lambda loaded, config, env: None,
        fit=partial(_fit, list(command)),
        x_axis="step",
        save_checkpoint=_save_checkpoint,
        open=True,
        needs=fields(command),
    )

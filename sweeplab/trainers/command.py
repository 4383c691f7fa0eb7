"""Any program as a task: ``sweep run --space my.toml -- python train.py --lr {lr}`` runs one
process per trial.

Each ``{name}`` in the command is replaced by the trial's value of ``name`` (a name the space and
the defaults lack, or one the space makes conditional, is refused before the first trial;
``{{`` and ``}}`` stand for a brace itself, as in Python's ``str.format``); the trial's values
are also given whole, as a JSON object, in ``SWEEPLAB_TRIAL_CONFIG``, and its seed in
``SWEEPLAB_TRIAL_SEED``. The program reports its evaluations in one of two ways:

* with :func:`sweeplab.trial.report` (Python), over a Unix socket the trial listens on
  (``SWEEPLAB_TRIAL_SOCKET``): the answer tells the program to stop (pruned, past its overfitting
  onset, out of the sweep's time), and a ``checkpoint=`` file or folder is copied at each new best
  evaluation, the trial's checkpoint;
* by printing lines of ``name=value`` pairs, one of them ``step=`` or ``epoch=`` and one the
  sweep's metric (Katib's metrics format), from any language:
  ``epoch=3 train_loss=0.52 val_loss=0.61 val_accuracy=0.83``. Every token of such a line is a
  pair with a number; any other line (a progress line without the metric) is output, not a
  report. Such a program cannot be answered: when its trial should stop, it is ended.

A program that goes on after it was told to stop is sent ``SIGTERM`` after
:data:`~sweeplab.trainers.program.GRACE_SECONDS`, and ``SIGKILL`` after as many more; a
line-reporting one is sent ``SIGTERM`` at once. How a program and a launcher's children are
ended is :mod:`sweeplab.trainers.program`'s. A stop signal to the sweep is passed on to the
program as ``SIGTERM`` (it may save its state and report it), with the same grace, and the trial
is retried.

A long trial survives a kill, a preemption or a stop signal when the program keeps its own state
in the trial's folder (``SWEEPLAB_TRIAL_FOLDER``, :func:`sweeplab.trial.folder`; kept across the
trial's attempts, deleted once it has ended) and reports with ``saved=True``: each such report
saves the curve up to it as the trial's resume state, and a retry runs the program again with
``SWEEPLAB_RESUMED_STEP`` (:func:`sweeplab.trial.resumed`) and that curve already recorded. A
retry on a machine that does not hold the program's state, and a program that saves nothing, run
again from the start.

Its output (stdout and stderr together) is the trial's artifact ``command/output.log``; an exit
status other than 0 that the sweep did not cause fails the trial, its reason the status and the
output's last lines.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import os
import re
import shlex
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from sweeplab.boundary import engine_code
from sweeplab.core import FitResult, Loaded, Reporter, Task, TrialEnv, evaluations_per_epoch, stopping
from sweeplab.errors import UsageError
from sweeplab.trainers.loop import Progress
from sweeplab.trainers.program import DRAIN_SECONDS, GRACE_SECONDS, Program
from sweeplab.trial import CONFIG_ENV, FOLDER_ENV, RESUMED_ENV, SEED_ENV, SOCKET_ENV

__all__ = ["COMMAND_PREFIX", "CommandFailed", "check_command", "command_name", "command_of_spec", "command_spec",
           "LineReport", "command_task", "fields", "filled", "line_report"]

#: How a command is written where a task name goes (``SweepOptions.task``, worker options):
#: this prefix and the command, quoted as a shell would.
COMMAND_PREFIX = "-- "
#: The metric a command's trial is judged by unless ``--metric`` names another.
DEFAULT_METRIC = "val_loss"

_FIELD = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}")
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
    """The names of the ``{name}`` fields in ``command`` (``{{`` and ``}}`` are braces)."""
    return frozenset(match.group(1) for part in command for match in _FIELD.finditer(part) if match.group(1))


def filled(command: Sequence[str], config: Mapping[str, Any]) -> list[str]:
    """``command`` with each ``{name}`` replaced by ``config[name]``, ``{{`` and ``}}`` by a brace."""
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return match.group(0)[0]
        return str(config[name]) if name in config else match.group(0)

    return [_FIELD.sub(value, part) for part in command]


def command_name(command: Sequence[str]) -> str:
    """The task name of a command, as ``sweep best --task`` takes it: the name of the script it
    runs (``train.py`` of ``python train.py``, ``torchrun --nproc-per-node 2 train.py`` or
    ``python -m torch.distributed.run train.py``), else the module of ``python -m pkg.train``,
    else the program's name."""
    for part in command[1:]:
        if not part.startswith("-") and part.endswith(_SCRIPT_SUFFIXES) and "{" not in part:
            return Path(part).name
    for index, part in enumerate(command[1:], start=1):
        if part == "-m" and index + 1 < len(command):
            return command[index + 1]
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


class LineReport(NamedTuple):
    """A printed line's evaluation: ``at`` on its ``axis`` (``step`` or ``epoch``, as named), ``metrics``."""

    at: float
    metrics: dict[str, float]
    axis: str


def line_report(line: str, metric: str) -> LineReport | None:
    """The evaluation a printed line reports: its ``step`` (or ``epoch``) and metrics; ``None``
    for a line that is not made only of ``name=number`` pairs with a step and ``metric``."""
    tokens = line.split()
    if not tokens or len(line) > 10_000:
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
    if at is None or metric not in values or not math.isfinite(at):
        return None
    return LineReport(at, values, "step" if step is not None else "epoch")


#: Where a trial keeps the copy of its best checkpoint, in the folder its attempts share (a
#: resumed attempt whose best evaluation came before the stop still has it).
BEST_FOLDER = ".sweeplab-best"
#: The step of the last ``saved=True`` report whose resume state was saved, in that folder: the
#: program's own state is there when it matches the resume state's step (not on another machine).
SAVED_MARK = ".sweeplab-saved"


def _copy_of(source: str, own: Path) -> Callable[[], dict[str, str]]:
    """What keeps the checkpoint ``source`` at a new best: a copy in the trial's folder (replacing
    the previous best's), since the program may write the next checkpoint over the same path."""

    def copy() -> dict[str, str]:
        path = Path(source)
        target = own / BEST_FOLDER
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


def _go_on(progress: Progress, own: Path) -> None:
    """Restore the trial's resume state when the program's own state for its step is in ``own``
    (this machine wrote both); else start afresh, the folder emptied. A best checkpoint copy that
    is not here (it was made on another machine) is forgotten."""
    if progress.resumption is None:
        return
    with engine_code():
        saved = progress.resumption.take()
        mark = own / SAVED_MARK
        here = saved is not None and mark.is_file() and mark.read_text() == repr(float(saved["at"]))
    if saved is None:
        return
    if not here:
        logging.getLogger(__name__).warning("the program's own state for step %g is not on this machine: the trial "
                                            "runs again from its start", saved["at"])
        for entry in own.iterdir():
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        return
    progress.restore(saved)
    state = progress.result.state
    if isinstance(state, Mapping) and not Path(state.get("path", "")).exists():
        progress.result.state = None


#: Seconds between two looks at the program, a stop signal and the grace period.
_POLL_SECONDS = 0.2


class _Trial:
    """One trial's command while it runs: the program, the bookkeeping (``progress``), the folder
    its attempts share (``own``), and when it was told to stop."""

    def __init__(self, program: Program, progress: Progress, own: Path) -> None:
        self.program, self.progress, self.own = program, progress, own
        self.told_at: float | None = None  # answered "stop", or sent SIGTERM
        self.terminated_at: float | None = None

    def follow(self) -> None:
        """Hear the program's reports until it ends, answering each; end it when its trial is to
        stop. What it reported is heard before a stop signal is acted on, so a state it saved is
        recorded with its step."""
        ended_at: float | None = None
        while not self.program.finished():
            for source, connection, line in self.program.lines(_POLL_SECONDS):
                if source == "errors":  # logged: reports are read from stdout
                    continue
                if source == "output":
                    reported = line_report(line, self.progress.metric)
                    if reported is not None:
                        self.progress.result.x_axis = reported.axis  # the curve's axis as the program names it
                        if self.hear(reported.at, reported.metrics):
                            self.end_now()
                    continue
                message = json.loads(line)
                stop = self.hear(message["step"], message["metrics"], message.get("checkpoint"),
                                 bool(message.get("saved")))
                with contextlib.suppress(OSError):  # a program that stopped listening
                    connection.sendall((json.dumps({"stop": stop}) + "\n").encode("utf-8"))
                if stop and self.told_at is None:
                    self.told_at = time.monotonic()
            if stopping.requested() is not None and self.terminated_at is None:
                stopping.answer()  # the program is told here (SIGTERM: it may save); its grace is this module's
                self.end_now()
            self.escalate()
            if self.program.process.poll() is not None:
                ended_at = ended_at or time.monotonic()
                if time.monotonic() - ended_at >= DRAIN_SECONDS:
                    break
        stopping.check()  # a stop signal: the trial is interrupted (and retried)

    def hear(self, step: float, metrics: Mapping[str, float], checkpoint: str | None = None, saved: bool = False) -> bool:
        """One evaluation of the program; whether its trial is to stop. A report after it was
        told to stop (pruned, past its onset) ends it. ``saved``: the program's state as of this
        evaluation is in the trial's folder, so the curve up to here is saved as the trial's
        resume state each time (the two must stand at the same step), also when the report ends
        in a stop signal; the step is then marked in the folder."""
        if self.progress.stopped:
            self.end_now()
            return True
        state = _copy_of(checkpoint, self.own) if checkpoint else None
        try:
            stop = self.progress.report(step, metrics, state=state)
        except stopping.StoppedAtStep:
            if saved:
                self.save(step)
            raise
        if saved:
            self.save(step)
        return stop

    def save(self, step: float) -> None:
        self.progress.save_resume_state({"step": step})
        with engine_code():
            (self.own / SAVED_MARK).write_text(repr(float(step)))

    def end_now(self) -> None:
        """``SIGTERM`` now, ``SIGKILL`` after the grace period (see :meth:`escalate`)."""
        if self.terminated_at is None:
            self.program.signal(signal.SIGTERM)
            self.terminated_at = time.monotonic()

    def escalate(self) -> None:
        """End a program that goes on after it was told to stop: ``SIGTERM`` after the grace
        period, ``SIGKILL`` after another."""
        now = time.monotonic()
        if self.terminated_at is not None:
            if now - self.terminated_at >= GRACE_SECONDS:
                self.program.signal(signal.SIGKILL)
        elif self.told_at is not None and now - self.told_at >= GRACE_SECONDS:
            self.end_now()


def _own_folder(env: TrialEnv) -> Path:
    """The folder the trial's attempts share (its resume store's); for a trial run without one
    (a direct call of the task's ``fit``), a folder of its own, removed when this process exits."""
    shared = getattr(env.resume.store, "folder", None) if env.resume is not None else None
    if shared is not None:
        return Path(shared)
    folder = Path(tempfile.mkdtemp(prefix="sweeplab-trial-"))
    atexit.register(shutil.rmtree, folder, True)
    return folder


def _environment(config: Mapping[str, Any], env: TrialEnv, own: Path, address: str,
                 resumed: float | None) -> dict[str, str]:
    """What the program finds in its environment (:mod:`sweeplab.trial`)."""
    found = {CONFIG_ENV: json.dumps(dict(config), default=str), SOCKET_ENV: address, FOLDER_ENV: str(own),
             SEED_ENV: str(env.trial_seed), "PYTHONUNBUFFERED": "1", RESUMED_ENV: ""}
    if resumed is not None:
        found[RESUMED_ENV] = repr(float(resumed))
    return found


def _fit(command: Sequence[str], loaded: Loaded, config: Mapping[str, Any], env: TrialEnv,
         reporter: Reporter) -> FitResult:
    """One trial: run the command with the trial's values, hear its reports, judge its end."""
    progress = Progress(reporter, env.metric, env.direction, env.early_stop, env.keep_state, env.resume)
    reporter.on_start(evaluations_per_epoch(config) or 0)
    argv = filled(command, config)
    with tempfile.TemporaryDirectory(prefix="sweeplab-trial-") as folder:
        own = _own_folder(env)
        own.mkdir(parents=True, exist_ok=True)
        _go_on(progress, own)
        resumed = progress.resumed.step if progress.resumed is not None else None
        program = Program(argv, Path(folder) / "output.log", Path(folder))
        try:
            program.start(_environment(config, env, own, program.address, resumed))
            _Trial(program, progress, own).follow()
        finally:
            program.close()
            attach = getattr(reporter, "attach", None)
            if attach is not None:
                attach(program.log_path, "command")
        status = program.process.returncode
        if status != 0 and not program.signalled:
            raise CommandFailed(shlex.join(argv[:2]), status, list(program.tail))
    if not progress.result.history:
        example = "val_loss=0.52" if progress.metric == "val_loss" else f"val_loss=0.52 {progress.metric}=0.8"
        raise RuntimeError(f"{shlex.join(argv[:2])} ended without reporting {progress.metric}: call "
                           f"sweeplab.trial.report(step, metrics), or print lines such as `epoch=1 {example}`")
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
        own_process=True,
    )

"""A command as a trial: its reports (over the socket or as printed lines), its stop, its
checkpoint, its failure; a two-process torchrun trial that reports once per evaluation."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from sweeplab.core import Resumption, TrialEnv
from sweeplab.core.stopping import StoppedAtStep
from sweeplab.sweeps.resume_states import AttemptsResume
from sweeplab.sweeps.signals import stop_at_next_step, stop_on_signals
from sweeplab.errors import UsageError
from sweeplab.trainers import command
from sweeplab.trainers import program as program_module
from sweeplab.trainers.resume_file import ResumeFile
from tests.checks import wait_for
from sweeplab.trainers.command import CommandFailed, command_name, command_task, fields, filled, line_report


class _Reporter:
    """Hears a trial's evaluations; says "prune" from the ``prune_at``-th on; keeps what is attached."""

    def __init__(self, prune_at: int | None = None) -> None:
        self.prune_at = prune_at
        self.points: list[tuple[int, dict[str, float]]] = []
        self.attached: dict[str, str] = {}

    def on_start(self, rounds: int) -> None:
        pass

    def on_eval(self, step: int, metrics: Mapping[str, float]) -> bool:
        self.points.append((step, dict(metrics)))
        return self.prune_at is not None and len(self.points) >= self.prune_at

    def attach(self, path: Path, artifact_dir: str) -> None:
        self.attached[f"{artifact_dir}/{path.name}"] = path.read_text()


def _fit(program: str, tmp_path: Path, config: Mapping[str, Any], reporter: _Reporter, metric: str = "val_loss",
         launcher: tuple[str, ...] = (), resume: Resumption | None = None) -> Any:
    """One trial of ``program`` (Python source, run with this interpreter) with ``config``."""
    script = tmp_path / "program.py"
    script.write_text(textwrap.dedent(program), encoding="utf-8")
    task = command_task([sys.executable, *launcher, str(script)])
    env = TrialEnv(device=None, precision="fp32", cache=None, seed=0, trial_seed=0, early_stop=None,  # type: ignore[arg-type]
                   metric=metric, direction="minimize", resume=resume)
    return task.fit(None, config, env, reporter)  # type: ignore[arg-type]


REPORTS = """
    import sys, time, signal
    from pathlib import Path
    from sweeplab import trial
    config = trial.config()
    if config.get("ignore_term"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for step in range(1, config["steps"] + 1):
        checkpoint = Path(f"ckpt-{step}.txt")
        checkpoint.write_text(f"model of step {step}")
        stop = trial.report(step, {"val_loss": abs(step - 3) + 1.0}, checkpoint=checkpoint)
        if stop and config["on_stop"] == "obey":
            print(f"stopped at {step}")
            break
        if stop and config["on_stop"] == "sleep":
            time.sleep(600)
    print("ran to its end")
"""


def test_a_program_reports_through_trial_report_and_its_best_checkpoint_is_kept(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    reporter = _Reporter()
    result = _fit(REPORTS, tmp_path, {"steps": 5, "on_stop": "obey"}, reporter)
    assert [step for step, _ in reporter.points] == [1, 2, 3, 4, 5]
    assert result.best == 2 and result.stopped is None  # val_loss is lowest at step 3
    assert Path(result.state["path"]).read_text() == "model of step 3"  # a copy: the program wrote on
    assert "ran to its end" in reporter.attached["command/output.log"]


def test_a_pruned_program_is_told_and_stops_at_that_evaluation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    reporter = _Reporter(prune_at=2)
    result = _fit(REPORTS, tmp_path, {"steps": 50, "on_stop": "obey"}, reporter)
    assert len(reporter.points) == 2 and result.stopped == "pruned"
    assert "stopped at 2" in reporter.attached["command/output.log"]


@pytest.mark.parametrize("on_stop", ["report on", "sleep"])
def test_a_program_that_ignores_the_stop_and_sigterm_is_ended(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              on_stop: str) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(command, "GRACE_SECONDS", 0.5)
    monkeypatch.setattr(program_module, "GRACE_SECONDS", 0.5)
    reporter = _Reporter(prune_at=2)
    result = _fit(REPORTS, tmp_path, {"steps": 10_000, "on_stop": on_stop, "ignore_term": True}, reporter)
    assert result.stopped == "pruned" and len(reporter.points) == 2  # reports after the stop are not heard
    assert "ran to its end" not in reporter.attached["command/output.log"]


PRINTS = """
    import sys, time
    for epoch in range(1, int(sys.argv[1]) + 1):
        print(f"epoch={epoch} train_loss={1 / epoch:.4f} val_loss={abs(epoch - 2) + 1.0} val_acc=0.5")
        print("a line that is output, not a report: loss=0.3 seen")
        time.sleep(0.05)
    print("ran to its end")
"""


def test_a_program_that_prints_lines_is_heard_and_ended_when_pruned(tmp_path: Path) -> None:
    reporter = _Reporter(prune_at=3)
    script = tmp_path / "printer.py"
    script.write_text(textwrap.dedent(PRINTS), encoding="utf-8")
    env = TrialEnv(device=None, precision="fp32", cache=None, seed=0, trial_seed=0, early_stop=None,  # type: ignore[arg-type]
                   metric="val_loss", direction="minimize")
    result = command_task([sys.executable, str(script), "{epochs}"]).fit(None, {"epochs": 1000}, env, reporter)  # type: ignore[arg-type]
    assert [step for step, _ in reporter.points] == [1, 2, 3]
    assert reporter.points[0][1] == {"step": 1.0, "train_loss": 1.0, "val_loss": 2.0, "val_acc": 0.5}
    assert result.stopped == "pruned" and result.best == 1
    assert "ran to its end" not in reporter.attached["command/output.log"]


@pytest.mark.parametrize(("program", "error", "words"), [
    ("print('epoch=1 val_loss=0.5')\nprint('loading')\nraise ValueError('lr too high')", CommandFailed,
     "exited with status 1; its last lines: "),
    ("print('nothing to say')", RuntimeError, "ended without reporting val_loss: call sweeplab.trial.report"),
    ("print('step=100 loss=2.3')", RuntimeError, "ended without reporting val_loss"),  # a progress line, not a report
    ("from sweeplab import trial\ntrial.report(1, {'val_acc': 0.5})", UsageError,
     "metric 'val_loss' is not one this task reports (val_acc)"),
    ("from sweeplab import trial\nif trial.report(1, {'val_loss': 0.5}):\n    raise SystemExit('crashed while stopping')",
     CommandFailed, "exited with status 1; its last lines: crashed while stopping"),
], ids=["fails", "never reports", "prints progress only", "reports another metric", "crashes after the stop"])
def test_a_program_that_fails_or_reports_nothing_useful_fails_its_trial_saying_why(
        tmp_path: Path, program: str, error: type[Exception], words: str) -> None:
    reporter = _Reporter(prune_at=1 if "stopping" in program else None)
    with pytest.raises(error) as raised:
        _fit(program, tmp_path, {}, reporter)
    assert words in str(raised.value)
    if "lr too high" in program:
        assert str(raised.value).endswith("ValueError: lr too high")
    assert "command/output.log" in reporter.attached  # the output is kept however the trial ended


def test_reports_behind_progress_bars_and_a_last_line_without_its_end_are_heard(tmp_path: Path) -> None:
    program = """
        import sys
        for epoch in range(1, 4):
            sys.stderr.write("\\r 10%|#  |\\r 90%|## |"); sys.stderr.flush()
            sys.stdout.write(f"epoch={epoch} val_loss={1 / epoch}" + ("\\n" if epoch < 3 else "")); sys.stdout.flush()
    """
    reporter = _Reporter()
    result = _fit(program, tmp_path, {}, reporter)
    assert [step for step, _ in reporter.points] == [1, 2, 3] and result.best == 2


TORCHRUN = """
    import os, signal, time, torch, torch.distributed as dist
    from sweeplab import trial
    print(f"pid {os.getpid()}", flush=True)
    dist.init_process_group("gloo")
    for step in range(1, 6):
        world = torch.ones(1)
        dist.all_reduce(world)
        if trial.report(step, {"val_loss": 1.0 / step, "ranks": world.item()}):
            print(f"rank {dist.get_rank()} stopped at {step}", flush=True)
            if trial.config()["ignore"]:  # a rank that hangs on: only SIGKILL ends it
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                time.sleep(600)
            break
    dist.destroy_process_group()
"""


@pytest.mark.parametrize("ranks", ["obey", "ignore the stop and SIGTERM"])
def test_a_two_process_torchrun_trial_reports_once_per_evaluation_and_its_ranks_end_with_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ranks: str) -> None:
    monkeypatch.setattr(program_module, "GRACE_SECONDS", 1.0)
    monkeypatch.setattr(command, "GRACE_SECONDS", 1.0)
    reporter = _Reporter(prune_at=2)
    result = _fit(TORCHRUN, tmp_path, {"ignore": ranks != "obey"}, reporter,
                  launcher=("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"))
    assert [(step, metrics["ranks"]) for step, metrics in reporter.points] == [(1, 2.0), (2, 2.0)]
    assert result.stopped == "pruned"
    log = reporter.attached["command/output.log"]
    assert "rank 0 stopped at 2" in log and "rank 1 stopped at 2" in log  # rank 0's answer, broadcast
    pids = [int(word) for line in log.splitlines() if line.startswith("pid ") for word in line.split()[1:2]]
    assert len(pids) == 2 and not [pid for pid in pids if Path(f"/proc/{pid}").exists()
                                   and Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"]


def test_lines_commands_and_names() -> None:
    assert line_report("epoch=3 train_loss=0.5 val_loss=6e-1", "val_loss") == (3.0, {"train_loss": 0.5, "val_loss": 0.6}, "epoch")
    assert line_report("step=40 epoch=2 val_loss=0.5", "val_loss") == (40.0, {"val_loss": 0.5}, "step")
    assert line_report("step=10 acc=nan", "acc") is not None
    for not_a_report in ("val_loss=0.5", "epoch=3", "epoch=3 val_loss=0.5 done", "", "epoch=x val_loss=1",
                         "step=100 loss=2.3"):
        assert line_report(not_a_report, "val_loss") is None
    assert filled(["--lr={lr}", "{x}", '{"json": 1}'], {"lr": 0.01}) == ["--lr=0.01", "{x}", '{"json": 1}']
    assert filled(["ckpt-{{epoch}}-{lr}.pt"], {"lr": 0.1}) == ["ckpt-{epoch}-0.1.pt"]
    assert fields(["ckpt-{{epoch}}-{lr}.pt", "{{x}}"]) == {"lr"}
    assert command_name(["torchrun", "--nproc-per-node", "2", "dir/train.py"]) == "train.py"
    assert command_name(["python", "-m", "torch.distributed.run", "--nproc-per-node", "2", "train.py"]) == "train.py"
    assert command_name(["python", "-m", "pkg.train", "--lr", "{lr}"]) == "pkg.train"
    assert command_name(["./run-it", "--lr", "{lr}"]) == "run-it"


SAVES_ON_SIGTERM = """
    import signal, sys, time
    from sweeplab import trial
    step = 0
    def save(signum, frame):
        print(f"saving at step {step}", flush=True)
        sys.exit(0)
    signal.signal(signal.SIGTERM, save)
    for step in range(1, 100_000):
        trial.report(step, {"val_loss": 1.0})
        time.sleep(0.01)
"""


class _Signalled(_Reporter):
    """Sends this process SIGTERM (as a cluster stops a job) at the ``at``-th evaluation it hears."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at
        self.resumed_with: list[float] = []

    def on_eval(self, step: int, metrics: Mapping[str, float]) -> bool:
        if len(self.points) == self.at - 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return super().on_eval(step, metrics)

    def on_resume(self, history: list[dict[str, float]], step: float) -> None:
        self.resumed_with = [point["step"] for point in history]


def test_a_stop_signal_to_the_sweep_is_passed_on_to_the_program_and_stops_the_trial(tmp_path: Path) -> None:
    reporter = _Signalled(at=2)
    with pytest.raises(StoppedAtStep), stop_on_signals(), stop_at_next_step():
        _fit(SAVES_ON_SIGTERM, tmp_path, {}, reporter)
    assert "saving at step" in reporter.attached["command/output.log"]  # the program had its SIGTERM, and its say


RESUMES = """
    from sweeplab import trial
    folder = trial.folder()
    start = 1 if trial.resumed() is None else int(trial.resumed()) + 1
    if start > 1:  # the state saved with that step
        assert (folder / f"state-{start - 1}.txt").read_text() == str(start - 1)
    print(f"starting at {start}", flush=True)
    for step in range(start, 6):
        (folder / f"state-{step}.txt").write_text(str(step))
        (folder / "model.txt").write_text(f"model of step {step}")
        trial.report(step, {"val_loss": abs(step - 2) + 1.0}, checkpoint=folder / "model.txt", saved=True)
"""


@pytest.mark.parametrize("retry_on", ["the same machine", "another machine"])
def test_a_program_that_saves_its_state_goes_on_from_it_when_its_trial_is_retried(tmp_path: Path, retry_on: str) -> None:
    store = AttemptsResume(ResumeFile(tmp_path / "resume" / "trial-0.pt"), lambda: True)
    first = _Signalled(at=3)
    with pytest.raises(StoppedAtStep), stop_on_signals(), stop_at_next_step():
        _fit(RESUMES, tmp_path, {}, first, resume=Resumption(store, 600))
    if retry_on == "another machine":  # the resume state reached it, the program's own folder did not
        for entry in store.folder.iterdir():
            entry.unlink() if entry.is_file() else shutil.rmtree(entry)
    retry = _Reporter()
    result = _fit(RESUMES, tmp_path, {}, retry, resume=Resumption(store, 600))
    again = retry_on == "another machine"
    assert f"starting at {1 if again else 4}" in retry.attached["command/output.log"]
    assert [step for step, _ in retry.points] == ([1, 2, 3, 4, 5] if again else [4, 5])
    assert [point["step"] for point in result.history] == [1, 2, 3, 4, 5]  # the curve, each step once
    assert Path(result.state["path"]).read_text() == "model of step 2"  # the best, from before the stop
    store.delete()
    assert not store.folder.exists()  # the program's state goes with the trial's


def test_a_program_outlives_no_sweep_killed_outright(tmp_path: Path) -> None:
    pid = tmp_path / "pid"
    (tmp_path / "sleeper.py").write_text(f"import os, time\nopen({str(pid)!r}, 'w').write(str(os.getpid()))\ntime.sleep(600)\n")
    sweep = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from sweeplab.core import TrialEnv
        from sweeplab.trainers.command import command_task
        from tests.trainers.test_command import _Reporter
        env = TrialEnv(device=None, precision="fp32", cache=None, seed=0, trial_seed=0, early_stop=None)
        command_task([sys.executable, {str(tmp_path / "sleeper.py")!r}]).fit(None, {{}}, env, _Reporter())
    """)], cwd=Path(__file__).resolve().parents[2])
    try:
        program = int(wait_for("the program's pid", lambda: pid.read_text() or None if pid.exists() else None, 60,
                               alive=sweep))
    finally:
        sweep.kill()  # SIGKILL: nothing of the sweep's runs after it
        sweep.wait()
    wait_for("the program to end with its sweep", lambda: True if _ended(program) else None, 30)


def _ended(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def test_the_sweeps_own_process_opens_no_device_for_a_command(tmp_path: Path) -> None:
    """The program picks its cards; the sweep's process stays on the CPU (no CUDA context of its
    own on the trial's card), whatever --device says."""
    from sweeplab.sweeps.checks import check
    from sweeplab.sweeps.options import SweepOptions

    space = tmp_path / "space.toml"
    space.write_text("[search.lr]\nchoices = [0.1]\n", encoding="utf-8")
    spec = command.command_spec([sys.executable, "-c", "pass", "{lr}"])
    checked = check(SweepOptions.of(spec, space=str(space), store_dir=tmp_path / "store", device="cuda:7"))
    assert checked.device.type == "cpu"

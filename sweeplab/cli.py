"""The ``sweep`` command: thin Typer commands that parse, call one function and render with rich."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
from rich.markup import escape

from sweeplab.errors import SweeplabError, TrainerError, UsageError
from sweeplab.terminal import Screen

T = TypeVar("T")

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Hyperparameter sweeps tracked in MLflow.")


console = Screen()
errors = Screen(stderr=True)

StoreDir = Annotated[Path, typer.Option("--store-dir", help="Folder of the embedded store (SQLite + artifacts + Optuna journal).")]
OnlyStudy = Annotated[Optional[str], typer.Option("--study", help="Only this study.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
TrackingUri = Annotated[
    Optional[str], typer.Option("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else the embedded store).")
]


def _fail(message: str, code: int = 2) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _answer(question: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``question(*args, **kwargs)``, a read command's call into the API; its error is one line
    with its exit code."""
    try:
        return question(*args, **kwargs)
    except SweeplabError as exc:
        raise _fail(str(exc), code=exc.exit_code) from None


def _parse_sets(values: list[str]) -> dict[str, str]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set {item}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def _uri(store_dir: Path, tracking_uri: str | None) -> str:
    """The tracking URI the read commands looked in, for their messages."""
    from sweeplab.tracker.store import resolve_store

    return resolve_store(store_dir, tracking_uri).tracking_uri


class _CommandAfterDashes(typer.core.TyperCommand):
    """``sweep run``, which takes a program to sweep after ``--`` (``sweep run --space s.toml --
    python train.py --lr {lr}``): what follows the first ``--`` is kept whole, in ``ctx.meta``."""

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        if "--" in args:
            ctx.meta[_COMMAND] = args[args.index("--") + 1:]
            args = args[:args.index("--")]
        return super().parse_args(ctx, args)

    def collect_usage_pieces(self, ctx: typer.Context) -> list[str]:
        return [*super().collect_usage_pieces(ctx), "[-- COMMAND ...]"]


_COMMAND = "sweeplab.command"


@app.command(cls=_CommandAfterDashes)
def run(
    ctx: typer.Context,
    task: Annotated[Optional[str], typer.Argument(metavar="TASK", help="Task to sweep: news, retrieval, sentiment, a task an installed package offers, or your own training function as FILE.py:FUNCTION or package.module:FUNCTION; or, after --, any command, with {name} for a trial's values.", show_default=False)] = None,
    trials: Annotated[int, typer.Option("--trials", "-n", help="Finished trials the study should hold (a rerun resumes).", rich_help_panel="Search")] = 6,
    timeout: Annotated[Optional[float], typer.Option("--timeout", help="Seconds the sweep may run: no trial starts after, and running trials stop at their next evaluation, keeping their best so far; with --trials, whichever comes first.", rich_help_panel="Search")] = None,
    data_dir: Annotated[Optional[Path], typer.Option("--data-dir", help="Data folder (default: the sample that ships with sweeplab).", rich_help_panel="Search")] = None,
    space: Annotated[Optional[str], typer.Option("--space", help="Space file, or a built-in space name (see `sweep spaces`).", rich_help_panel="Search")] = None,
    sampler: Annotated[str, typer.Option("--sampler", help="tpe, grid (every cell once) or random.", rich_help_panel="Search")] = "tpe",
    pruner: Annotated[Optional[str], typer.Option("--pruner", help="hyperband (several successive-halving brackets), asha (successive halving), median (below the median of earlier trials) or none; default: the resumed sweep's, else none for --sampler grid and hyperband otherwise.", rich_help_panel="Search")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seeds the sampler, the validation split and training.", rich_help_panel="Search")] = 0,
    split_seed: Annotated[Optional[int], typer.Option("--split-seed", help="Seeds the validation split alone (default: --seed), to compare sweeps on one split.", rich_help_panel="Search")] = None,
    study: Annotated[Optional[str], typer.Option("--study", help="Study name (default: SPACE-SAMPLER).", rich_help_panel="Search")] = None,
    experiment: Annotated[Optional[str], typer.Option("--experiment", help="MLflow experiment (default: sweeplab-TASK).", rich_help_panel="Tracking")] = None,
    store_dir: Annotated[Path, typer.Option("--store-dir", help="Folder of the embedded store (SQLite + artifacts + Optuna journal).", rich_help_panel="Tracking")] = Path("mlruns"),
    tracking_uri: Annotated[Optional[str], typer.Option("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else the embedded store).", rich_help_panel="Tracking")] = None,
    storage: Annotated[Optional[str], typer.Option("--storage", help="Optuna storage: RDB URL or journal file (default: beside the store).", rich_help_panel="Tracking")] = None,
    cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", help="Prepared-data cache (default: STORE_DIR/cache).", rich_help_panel="Tracking")] = None,
    set_: Annotated[list[str], typer.Option("--set", help="Fix a parameter: --set text_model=tiny (repeatable).", rich_help_panel="Search")] = [],
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.", rich_help_panel="Runtime")] = "auto",
    precision: Annotated[str, typer.Option("--precision", help="auto, fp32, bf16 or fp16 (mixed precision via torch.autocast).", rich_help_panel="Runtime")] = "auto",
    early_stop: Annotated[bool, typer.Option("--early-stop/--no-early-stop", help="Stop a trial at its overfitting onset.", rich_help_panel="Search")] = True,
    onset_s: Annotated[int, typer.Option("--onset-s", help="UP_s: successive validation-loss rises that mark the onset.", rich_help_panel="Search")] = 3,
    onset_alpha: Annotated[float, typer.Option("--onset-alpha", help="GL_alpha: generalization-loss threshold in percent.", rich_help_panel="Search")] = 5.0,
    checkpoints: Annotated[str, typer.Option("--checkpoints", help="best (each new best trial), all or none.", rich_help_panel="Tracking")] = "best",
    metric: Annotated[Optional[str], typer.Option("--metric", help="Validation metric that picks the best evaluation and trial (default: the task's, val_accuracy).", rich_help_panel="Search")] = None,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Log curve and confusion-matrix PNGs.", rich_help_panel="Tracking")] = True,
    val_fraction: Annotated[float, typer.Option("--val-fraction", help="Share of labelled rows held out for validation.", rich_help_panel="Search")] = 0.2,
    allow_bad_rows: Annotated[bool, typer.Option("--allow-bad-rows", help="Go on when a data file's last line is cut short or it loses more than 1% of its rows to problems (they are reported either way).", rich_help_panel="Search")] = False,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Worker processes on this machine sharing the study (--trials is their total); default: one per entry of --gpus, else 1.", rich_help_panel="Runtime")] = None,
    gpus: Annotated[Optional[str], typer.Option("--gpus", help="GPUs for the workers, round robin (sets CUDA_VISIBLE_DEVICES): --gpus 0,1; several workers on one card with --gpus 0 --workers 4 or --gpus 0,0,1,1 --workers 4 (a trial out of GPU memory there runs once more alone on the card).", rich_help_panel="Runtime")] = None,
    gpus_per_trial: Annotated[int, typer.Option("--gpus-per-trial", help="Cards each trial gets, taken from --gpus in turn (a torchrun command on several GPUs): --gpus 0,1,2,3,4,5,6,7 --gpus-per-trial 2 runs 4 trials at once.", rich_help_panel="Runtime")] = 1,
    max_retries: Annotated[int, typer.Option("--max-retries", help="Times a killed, preempted or interrupted trial is run again with the same parameters, from its latest resume state (0: never).", rich_help_panel="Runtime")] = 3,
    checkpoint_minutes: Annotated[float, typer.Option("--checkpoint-minutes", help="Minutes of training between saves of a trial's resume state (at the first evaluation after; also at a stop signal).", rich_help_panel="Runtime")] = 10.0,
    compile_: Annotated[bool, typer.Option("--compile/--no-compile", help="torch.compile each trial's model (its compile time counts in the trial; tag sweeplab.compile).", rich_help_panel="Runtime")] = False,
    heartbeat: Annotated[int, typer.Option("--heartbeat", help="Seconds between a trial's heartbeats; a trial silent for twice that (its machine or container died) is failed as killed and run again.", rich_help_panel="Tracking")] = 60,
    credentials: Annotated[Optional[Path], typer.Option("--credentials", help="File holding USER:PASSWORD (mode 600; else SWEEPLAB_CREDENTIALS) for a tracking server that asks for them (sweep server --credentials).", rich_help_panel="Tracking")] = None,
    ray: Annotated[Optional[str], typer.Option("--ray", metavar="ADDRESS", help="Run the trials on a Ray cluster's nodes, at most --workers at once (default: as many as it holds): its HOST:PORT, auto (the cluster this machine belongs to) or local (a Ray runtime started for the sweep). This machine serves the embedded store to the nodes for the sweep (--tracking-uri and --storage servers are used as given). pip install 'sweeplab\\[ray]'.", rich_help_panel="Runtime")] = None,
    trial_resources: Annotated[Optional[str], typer.Option("--trial-resources", help="With --ray, what each trial asks of the cluster: cpu=N, gpu=F (gpu=0.5: two trials share a card) and the cluster's own resources, such as cpu=2,gpu=0.5 (default: cpu=1).", rich_help_panel="Runtime")] = None,
    outage_limit: Annotated[float, typer.Option("--outage-limit", help="Seconds a database or tracking server may stay unreachable (calls are retried) before the sweep stops, exit 75; the same command resumes it.", rich_help_panel="Tracking")] = 300.0,
) -> None:
    """Run (or resume) a sweep: each trial is an MLflow child run under the sweep's parent run."""
    from sweeplab.sweeps.options import SweepOptions
    from sweeplab.sweeps.signals import Stopped, stop_on_signals
    from sweeplab.tasks import check_before_loading, task_or_command

    try:
        task = task_or_command(task, ctx.meta.get(_COMMAND))
        from sweeplab.serving import use_credentials

        use_credentials(credentials)
        # What needs no task, store or data is checked before torch, the task, MLflow and Optuna
        # are imported (seconds): a misspelt task, a flag's value, a --set a built-in refuses.
        overrides = _parse_sets(set_)
        check_before_loading(task, overrides)
        options = SweepOptions.of(
            task, trials=trials, timeout=timeout, data_dir=data_dir, space=space, sampler=sampler, pruner=pruner, seed=seed, split_seed=split_seed,
            study=study, experiment=experiment, store_dir=store_dir, tracking_uri=tracking_uri, storage=storage,
            cache_dir=cache_dir, overrides=overrides, device=device, precision=precision,
            early_stop=early_stop, onset_s=onset_s, onset_alpha=onset_alpha, checkpoints=checkpoints, metric=metric, plots=plots,
            val_fraction=val_fraction, workers=workers if workers is not None else max(1, len(gpus.split(",")) // max(1, gpus_per_trial)) if gpus else 0 if ray else 1, heartbeat=heartbeat, outage_limit=outage_limit,
            gpus=tuple(g.strip() for g in gpus.split(",")) if gpus else (), gpus_per_trial=gpus_per_trial, compile=compile_,
            max_retries=max_retries, checkpoint_minutes=checkpoint_minutes, allow_bad_rows=allow_bad_rows,
            ray=ray, trial_resources=trial_resources,
        )
        from sweeplab.sweeps.early import check_early

        check_early(options)  # the stores, the space file, the data folder: before the task's import (torch)
        from sweeplab.console import RichObserver
        from sweeplab.sweeps.driver import run_sweep
        from sweeplab.tasks import get_task

        metric = metric or get_task(task).metric
        with stop_on_signals(), RichObserver(console, metric) as observer:
            outcome = run_sweep(options, observer)
    except SweeplabError as exc:  # bad input 2, every trial failed 1, internal error 70, store away 75
        if isinstance(exc, TrainerError):  # the task's own code failed before any trial (its reader): where, in its code
            errors.print("".join(traceback.format_exception(exc.error)).rstrip(), highlight=False, markup=False)
        raise _fail(str(exc), code=exc.exit_code) from None
    except KeyboardInterrupt as exc:  # Ctrl-C 130; SIGTERM, SIGHUP, SIGUSR1: 128 + the signal's number
        said = str(exc) if isinstance(exc, Stopped) else "interrupted"
        raise _fail(f"{said}; run the same command again to resume", code=getattr(exc, "exit_code", 130)) from None
    from sweeplab.console import Phrases, sweep_summary

    for line in sweep_summary(outcome, metric, timeout):  # after the sweep's line, which the observer left
        console.print(line, highlight=False)
    finished = outcome.counts.get("complete", 0) + outcome.counts.get("pruned", 0)
    if finished < outcome.target and (timeout is None or outcome.counts.get("failed", 0)):
        errors.print(Phrases(f"[yellow]warning:[/] {finished} of {outcome.target} trials finished;",
                             "failures are tagged sweeplab.fail_reason in MLflow;", "run the same command again to retry"))


@app.command()
def best(
    task: Annotated[str, typer.Option("--task", help="Task whose trials to rank.")],
    metric: Annotated[Optional[str], typer.Option("--metric", help="Summary metric to rank by (default: the one the task's newest sweep ran with, e.g. best_val_accuracy).")] = None,
    top: Annotated[int, typer.Option("--top", help="How many trials to show.")] = 1,
    study: OnlyStudy = None,
    as_json: AsJson = False,
    store_dir: StoreDir = Path("mlruns"),
    tracking_uri: TrackingUri = None,
) -> None:
    """The best trial(s) of a task, from the tracking store alone: params, best epoch, onset, checkpoint."""
    from sweeplab import api

    rows = _answer(api.best, task, top=top, metric=metric, study=study, store_dir=store_dir, tracking_uri=tracking_uri)
    if as_json:
        print(json.dumps([r.as_dict() for r in rows], indent=2))
    elif rows:
        from sweeplab.console import trial_panels

        for table in trial_panels(rows):
            console.print(table)
            console.print()
    if not rows:
        raise _fail(f"no finished trials of task {task}{f' with metric {metric}' if metric else ''} in {_uri(store_dir, tracking_uri)}", code=1)


@app.command()
def status(
    task: Annotated[Optional[str], typer.Option("--task", help="Only sweeps of this task.")] = None,
    study: OnlyStudy = None,
    as_json: AsJson = False,
    store_dir: StoreDir = Path("mlruns"),
    tracking_uri: TrackingUri = None,
) -> None:
    """Sweeps in the store, running or finished: trials complete, pruned, failed, killed and running, best so far."""
    from sweeplab import api

    rows = _answer(api.status, task, study=study, store_dir=store_dir, tracking_uri=tracking_uri)
    if as_json:
        print(json.dumps([r.as_dict() for r in rows], indent=2))
    elif rows:
        from sweeplab.console import sweep_panels

        for table in sweep_panels(rows):
            console.print(table)
            console.print()
    if not rows:
        raise _fail(f"no sweeps{f' of task {task}' if task else ''}{f' in study {study}' if study else ''} in {_uri(store_dir, tracking_uri)}", code=1)


@app.command()
def report(
    task: Annotated[Optional[str], typer.Option("--task", help="The newest sweep of this task (default: the newest sweep).")] = None,
    study: OnlyStudy = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="HTML file to write (default: STUDY-report.html here).")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Draw the pictures again rather than reading the parent run's.")] = False,
    store_dir: StoreDir = Path("mlruns"),
    tracking_uri: TrackingUri = None,
) -> None:
    """One self-contained HTML page of a sweep, for sharing: its settings, best trials and pictures."""
    from sweeplab import api

    page = _answer(api.report, task, study=study, out=out, fresh=fresh, store_dir=store_dir, tracking_uri=tracking_uri)
    if page is None:
        raise _fail(f"no sweeps{f' of task {task}' if task else ''}{f' in study {study}' if study else ''} in {_uri(store_dir, tracking_uri)}", code=1)
    console.print(f"wrote {escape(str(page))}", soft_wrap=True)


Credentials = Annotated[Optional[Path], typer.Option("--credentials", help="File holding USER:PASSWORD (mode 600; else SWEEPLAB_CREDENTIALS): a store served beyond this machine asks for them.")]
NoAuth = Annotated[bool, typer.Option("--no-auth", help="Serve beyond this machine without credentials: anyone who reaches the port reads and changes every run.")]


@app.command()
def ui(
    store_dir: StoreDir = Path("mlruns"),
    tracking_uri: TrackingUri = None,
    port: Annotated[int, typer.Option("--port", help="Port of the MLflow UI.")] = 5000,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    open_browser: Annotated[bool, typer.Option("--open", help="Open the newest sweep's trials side by side in a browser once the UI answers.")] = False,
    credentials: Credentials = None,
    no_auth: NoAuth = False,
) -> None:
    """Open the MLflow UI on the same store (parent run = sweep, child runs = trials), and print
    the address of each sweep's trials side by side. On a tracking server, print the addresses
    in the server's own UI.

    Refused, with nothing created, where there is no store yet (MLflow would make an empty one,
    after which ``sweep best`` would report no trials rather than no store); refused before any
    address is printed when the port is taken (MLflow would exit after the addresses, which
    then open whatever holds the port), or when it would serve beyond this machine without
    credentials."""
    from sweeplab.api import open_store
    from sweeplab.serving import open_when_up, sweeps_or_none, ui_launch, use_credentials
    from sweeplab.tracker.embedded import ensure_tracking_db
    from sweeplab.tracker.preflight import check_store
    from sweeplab.tracker.reconnect import bound_http_retries

    try:
        use_credentials(credentials)  # a tracking server's UI asks for them, and so does reading its sweeps
        store = open_store(store_dir, tracking_uri)  # no embedded store here: one line
        check_store(store, None)  # a tracking server or database that does not answer: one line, now
        server = store.tracking_uri.startswith(("http:", "https:"))
        launch = None if server else ui_launch(store.tracking_uri, host, port, credentials, no_auth, store.root / "ui-auth")
        bound_http_retries()
        if store.is_default:  # one a killed sweep left half-made is completed before MLflow reads it
            ensure_tracking_db(store.root / "mlflow.db", store.artifact_root)
        rows = sweeps_or_none(store_dir, tracking_uri)
    except SweeplabError as exc:
        raise _fail(str(exc), code=exc.exit_code) from None
    root = launch.root if launch is not None else store.tracking_uri.rstrip("/") + "/"
    from sweeplab.tracker.note import comparison_link, sweeps_link

    home = root + sweeps_link([row.experiment_id for row in rows])  # the UI's own first page is a GenAI welcome
    links: dict[str, str] = {}
    for row in rows:  # newest sweep first: its link is the one kept for its study
        links.setdefault(f"study {row.study} ({row.task})",
                         root + comparison_link(row.experiment_id, row.study, row.metric, row.direction))
    for line in launch.lines if launch is not None else []:
        errors.print(line, highlight=False, markup=False, soft_wrap=True)
    console.print(f"MLflow UI {'of the tracking server' if server else 'on'} {root} for {store.tracking_uri}; the sweeps:",
                  highlight=False)
    console.print(f"    {home}", highlight=False, soft_wrap=True, markup=False)
    for name, url in links.items():
        console.print(f"  {name}, trials side by side:", highlight=False)
        console.print(f"    {url}", highlight=False, soft_wrap=True, markup=False)
    newest = next(iter(links.values()), home)
    if launch is None:  # the server serves its own UI
        if open_browser:
            import webbrowser

            webbrowser.open(newest)
        return
    sys.stdout.flush()
    if not open_browser:
        os.execve(sys.executable, launch.command, launch.env)  # the UI takes this process over: a kill or Ctrl-C reaches it
    process = subprocess.Popen(launch.command, env=launch.env)
    signal.signal(signal.SIGTERM, lambda *_: process.terminate())  # a kill of this process stops the UI too
    try:
        open_when_up(root, newest, process)
        raise typer.Exit(process.wait())
    except KeyboardInterrupt:
        process.terminate()
        raise typer.Exit(130) from None


@app.command()
def server(
    backend_store_uri: Annotated[Optional[str], typer.Option("--backend-store-uri", help="Database of the runs: postgresql://USER:PW@HOST/DB, or default STORE_DIR/server.db (SQLite).")] = None,
    artifacts: Annotated[Optional[Path], typer.Option("--artifacts-destination", help="Where the server keeps artifacts (default: STORE_DIR/server-artifacts).")] = None,
    store_dir: StoreDir = Path("mlruns"),
    host: Annotated[str, typer.Option("--host", help="Address to listen on (0.0.0.0 for workers on other machines: then with --credentials).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 5000,
    hosts: Annotated[Optional[str], typer.Option("--allowed-hosts", help="Host headers the server accepts, comma-separated, wildcards allowed (default: loopback, private addresses and this machine's names).")] = None,
    credentials: Credentials = None,
    no_auth: NoAuth = False,
) -> None:
    """Start an MLflow tracking server for workers on several machines, and print the flags they use."""
    from sweeplab.serving import server_launch

    try:
        launch = server_launch(backend_store_uri, artifacts, store_dir, host, port, hosts, credentials, no_auth)
    except SweeplabError as exc:
        raise _fail(str(exc), code=exc.exit_code) from None
    for line in launch.lines:
        (errors if line.startswith("warning:") else console).print(line, highlight=False, markup=False, soft_wrap=True)
    sys.stdout.flush()
    os.execve(sys.executable, launch.command, launch.env)  # the server takes this process over: a kill or Ctrl-C reaches it


@app.command()
def spaces(name: Annotated[Optional[str], typer.Argument(help="Print this built-in space (to copy and edit).")] = None) -> None:
    """List the built-in search spaces, or print one."""
    from sweeplab.sweeps.space import builtin_spaces

    found = builtin_spaces()
    if name is None:
        for key, path in sorted(found.items()):
            console.print(f"{key:24} {path}", highlight=False)
        return
    if name not in found:
        raise _fail(f"{name}: no built-in space of that name (built-in: {', '.join(sorted(found))})")
    print(found[name].read_text(encoding="utf-8"), end="")


@app.command()
def shapes(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write {split}_imgs.tsv and {split}_texts.jsonl into.")],
    train: Annotated[int, typer.Option("--train", help="Training images.")] = 800,
    valid: Annotated[int, typer.Option("--valid", help="Validation images.")] = 150,
    test: Annotated[int, typer.Option("--test", help="Test images (0: no test split).")] = 150,
    image_size: Annotated[int, typer.Option("--image-size", help="Side of the images in pixels.")] = 64,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the generator.")] = 0,
) -> None:
    """Write a MUGE-format retrieval set of coloured shapes with Chinese captions (for `sweep run retrieval`)."""
    from sweeplab.datasets.shapes import write_shapes

    sizes = {"train": train, "valid": valid, "test": test}
    bad = [f"--{k} {v}" for k, v in sizes.items() if v < (0 if k == "test" else 2)]
    if bad or image_size < 16:
        raise _fail(f"{bad[0] if bad else f'--image-size {image_size}'}: expected at least "
                    f"{'2 images (0 for --test)' if bad else '16 pixels'}")
    write_shapes(out_dir, {k: v for k, v in sizes.items() if v}, seed, image_size)
    console.print(f"wrote {out_dir}; next: sweep run retrieval --data-dir {out_dir}", highlight=False)


def main() -> None:
    """Console-script entry point. Optuna's plots draw through pyplot: a command draws into
    files, so pyplot needs no window system (a user's own ``MPLBACKEND`` is kept)."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    from sweeplab.serving import use_credentials

    try:
        use_credentials(None)  # SWEEPLAB_CREDENTIALS, for every command that reads or writes a served store
    except SweeplabError as exc:
        raise SystemExit(_fail(str(exc), code=exc.exit_code).exit_code) from None
    app()

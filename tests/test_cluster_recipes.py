"""The README's cluster recipes say what sweeplab does: nothing here starts SLURM or Kubernetes.

Every ```yaml block of README.md is read with ``yaml.safe_load_all`` and every ```bash block that
is a script (its first line ``#!/bin/bash``: a SLURM batch script) is checked by ``bash -n``. In
both, each ``sweep run`` and ``sweep server`` command line is parsed by sweeplab's own command
line (a misspelt flag, a flag without its value or a value of the wrong type fails), and the
fields that decide what happens on a cluster are checked: sweep started in the exec form (the
stop signal reaches it, not a shell), credentials and database passwords from a Secret and never
written in a manifest, a Job's pods never restarted in place and given time to save on a stop,
its ``podFailurePolicy`` failing the Job on exactly the exit codes that a rerun would not cure.
Across blocks: the Secrets the manifests read are the ones the README creates, and the workers
reach the server through a Service that selects it, on its port, by a name it accepts.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import typer
import yaml

from sweeplab.cli import app
from sweeplab.errors import InternalError, SweepFailed, Unreachable, UsageError
from tests.test_readme import BLOCKS, Block

COMMANDS = typer.main.get_command(app).commands  # type: ignore[attr-defined]
MANIFESTS = [block for block in BLOCKS if block.lang == "yaml"]
SCRIPTS = [block for block in BLOCKS if block.lang == "bash" and block.code.startswith("#!/bin/bash")]
#: Exit codes that a new pod would only meet again: every trial failed, bad input, sweeplab's own error.
NO_RERUN = {SweepFailed.exit_code, UsageError.exit_code, InternalError.exit_code}
#: A URL that carries a password (``postgresql://USER:PASSWORD@HOST/DB``).
PASSWORD_IN_URL = re.compile(r"://[^/\s:@]+:[^/\s@]+@")
#: A word that runs sweep: ``sweep`` itself, or a shell's ``-c`` string that does.
RUNS_SWEEP = re.compile(r"(^|[\s;&|(])sweep(\s|$)")
SECRET_NAMES = re.compile(r"PASSWORD|CREDENTIALS|TOKEN|SECRET", re.IGNORECASE)
POD_SPEC = {"Pod": ("spec",), "Job": ("spec", "template", "spec"), "Deployment": ("spec", "template", "spec"),
            "StatefulSet": ("spec", "template", "spec"), "CronJob": ("spec", "jobTemplate", "spec", "template", "spec")}


def sweep_params(words: list[str], where: str) -> dict[str, Any]:
    """Parse ``sweep SUBCOMMAND ARGS...`` with sweep's own command line, as the shell would hand
    it over; an error of the parser is the test's failure, naming ``where``."""
    assert words[0] == "sweep" and len(words) > 1 and words[1] in COMMANDS, f"{where}: not a sweep command: {words}"
    try:
        return COMMANDS[words[1]].make_context(f"sweep {words[1]}", list(words[2:])).params
    except Exception as exc:  # typer's click errors: no such option, a missing or ill-typed value
        raise AssertionError(f"{where}: {shlex.join(words)}: {exc}") from exc


def documents(block: Block) -> list[dict[str, Any]]:
    docs = [doc for doc in yaml.safe_load_all(block.code) if doc is not None]
    assert docs and all(isinstance(doc, dict) and "kind" in doc for doc in docs), f"README.md:{block.line}: not manifests"
    return docs


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    spec: Any = doc
    for key in POD_SPEC.get(doc["kind"], ()):
        spec = spec.get(key) or {}
    return spec if doc["kind"] in POD_SPEC else None


def sweep_containers(doc: dict[str, Any]) -> Iterator[tuple[dict[str, Any], list[str]]]:
    """The containers of ``doc``'s pods that run sweep, with their command line."""
    for container in (pod_spec(doc) or {}).get("containers", []):
        words = [str(word) for word in [*container.get("command", []), *container.get("args", [])]]
        if any(RUNS_SWEEP.search(word) for word in words):
            yield container, words


def from_secret(container: dict[str, Any], name: str) -> bool:
    return any(item["name"] == name and "secretKeyRef" in item.get("valueFrom", {}) for item in container.get("env", []))


def check_manifests(block: Block) -> None:
    where = f"README.md:{block.line}"
    for doc in documents(block):
        shown = f"{where} {doc['kind']} {doc.get('metadata', {}).get('name')}"
        assert not [text for text in _strings(doc) if PASSWORD_IN_URL.search(text)], f"{shown}: a password in a URL"
        assert doc["kind"] != "Secret" or not (doc.get("data") or doc.get("stringData")), \
            f"{shown}: a Secret's values written in the README (create it from files: kubectl create secret)"
        spec = pod_spec(doc)
        for container in (spec or {}).get("containers", []):
            literal = [item["name"] for item in container.get("env", []) if SECRET_NAMES.search(item["name"]) and "value" in item]
            assert not literal, f"{shown}: {literal} written in the manifest, not taken from a Secret"
        runs = []
        for container, words in sweep_containers(doc):
            assert container.get("command", [None])[0] == "sweep", \
                f"{shown}: sweep not started in the exec form (command: [\"sweep\", ...]): {words}"
            params = sweep_params(words, shown)
            runs.append(words[1] == "run")
            served = words[1] == "server" and params["host"] not in ("127.0.0.1", "localhost", "::1")
            tracked = words[1] == "run" and str(params.get("tracking_uri") or "").startswith(("http://", "https://"))
            if served or tracked:
                assert not params.get("no_auth") and params["credentials"] is None and from_secret(container, "SWEEPLAB_CREDENTIALS"), \
                    f"{shown}: the credentials do not come from a Secret as env SWEEPLAB_CREDENTIALS (secretKeyRef; " \
                    "as a file, a Secret's key is root's and readable by all unless defaultMode says otherwise)"
            for url in (params.get("storage"), params.get("backend_store_uri"), params.get("tracking_uri")):
                if str(url or "").startswith("postgres"):
                    assert from_secret(container, "PGPASSWORD"), f"{shown}: {url}: no PGPASSWORD from a Secret"
        if doc["kind"] == "Job" and any(runs):
            _check_job(doc, spec or {}, shown)


def _check_job(doc: dict[str, Any], spec: dict[str, Any], shown: str) -> None:
    """A Job of sweep workers: a stopped pod is replaced (never restarted in place, which
    ``podFailurePolicy`` needs) after time to save its trial, a preemption does not count, and
    the exit codes a rerun would meet again fail the Job (not 75, a store that stayed away, nor
    128 + a signal)."""
    job = doc["spec"]
    assert spec.get("restartPolicy") == "Never", f"{shown}: restartPolicy {spec.get('restartPolicy')}"
    assert int(spec.get("terminationGracePeriodSeconds", 30)) >= 30, f"{shown}: under 30 s to save a trial on SIGTERM"
    rules = job.get("podFailurePolicy", {}).get("rules", [])
    assert any(rule["action"] == "Ignore" and {"type": "DisruptionTarget"} in rule.get("onPodConditions", [])
               for rule in rules), f"{shown}: a preemption counts against backoffLimit"
    (fail,) = [rule["onExitCodes"] for rule in rules if rule["action"] == "FailJob"]
    assert fail["operator"] == "In" and set(fail["values"]) == NO_RERUN, f"{shown}: FailJob on {fail['values']}, not {sorted(NO_RERUN)}"
    assert Unreachable.exit_code not in fail["values"]
    assert fail["containerName"] in {c["name"] for c in spec["containers"]}, f"{shown}: no container {fail['containerName']}"
    if job.get("completionMode") == "Indexed":
        assert 1 <= int(job["parallelism"]) <= int(job["completions"]), f"{shown}: parallelism and completions"


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, str):
        yield value


def command_lines(code: str) -> Iterator[list[str]]:
    """Each command line of shell ``code`` as words: backslash continuations joined, comments
    dropped, ``$VAR`` and ``${VAR}`` replaced by a value (1), a leading ``exec`` kept. A line that
    is not one command (a heredoc's text) is left out, unless it runs sweep."""
    for line in code.replace("\\\n", " ").splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError as exc:
            assert not RUNS_SWEEP.search(line), f"{line}: {exc}"
            continue
        if words:
            yield [re.sub(r"\$\{?\w+\}?", "1", word) for word in words]


def check_script(block: Block) -> None:
    where = f"README.md:{block.line}"
    syntax = subprocess.run(["bash", "-n"], input=block.code, capture_output=True, text=True, timeout=30)
    assert syntax.returncode == 0, f"{where}: bash -n: {syntax.stderr}"
    lines = list(command_lines(block.code))
    sweeps = [words for words in lines if (words[1:] if words[0] == "exec" else words)[:1] == ["sweep"]]
    for words in sweeps:
        sweep_params(words[1:] if words[0] == "exec" else words, where)
    directives = [line.split(None, 1)[1] for line in block.code.splitlines() if line.startswith("#SBATCH ")]
    if any(d.startswith("--signal=B:") for d in directives) and "trap " not in block.code:
        assert all(words[0] == "exec" for words in sweeps), \
            f"{where}: --signal=B: signals the batch shell alone: exec sweep, or trap and forward the signal"


@pytest.mark.parametrize("block", [pytest.param(b, id=f"README.md:{b.line}:{b.lang}") for b in MANIFESTS + SCRIPTS])
def test_a_cluster_recipe_of_the_readme_does_what_sweeplab_does(block: Block) -> None:
    (check_manifests if block.lang == "yaml" else check_script)(block)


def _all_documents() -> list[dict[str, Any]]:
    return [doc for block in MANIFESTS for doc in documents(block)]


def test_the_manifests_read_the_secret_the_readme_makes_and_reach_the_server_through_its_service() -> None:
    from mlflow.server.security_utils import get_default_allowed_hosts, is_allowed_host_header

    made: dict[str, set[str]] = {}
    for block in BLOCKS:
        for words in command_lines(block.code) if block.lang == "bash" else []:
            if words[:4] == ["kubectl", "create", "secret", "generic"]:
                keys = [w.split("=", 2)[1] for w in words[5:] if w.startswith(("--from-file=", "--from-literal="))]
                made.setdefault(words[4], set()).update(keys)
    docs = _all_documents()
    for doc in docs:
        for container in (pod_spec(doc) or {}).get("containers", []):
            for item in container.get("env", []):
                if ref := item.get("valueFrom", {}).get("secretKeyRef"):
                    assert ref["key"] in made.get(ref["name"], set()), f"{item['name']}: no Secret {ref} is made ({made})"
    services = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "Service"}
    servers = [(doc, container, sweep_params(words, "server")) for doc in docs for container, words in sweep_containers(doc)
               if words[1] == "server"]
    reached = 0
    for doc in docs:
        for _, words in sweep_containers(doc):
            uri = str(sweep_params(words, "worker").get("tracking_uri") or "")
            match = re.fullmatch(r"https?://([^:/]+):(\d+)/?", uri)
            if not match or match[1] not in services:
                continue
            service, port = services[match[1]], int(match[2])
            entries = [entry for entry in service["spec"]["ports"] if entry["port"] == port]
            assert entries, f"Service {match[1]} has no port {port}"
            entry = entries[0]
            chosen = [(container, params) for server, container, params in servers
                      if service["spec"]["selector"].items() <= server["spec"]["template"]["metadata"]["labels"].items()]
            assert chosen, f"Service {match[1]} selects no sweep server"
            for container, params in chosen:
                assert params["port"] == entry.get("targetPort", port), f"Service {match[1]}: port {entry} but --port {params['port']}"
                # MLflow's own check against DNS rebinding, of the Host header the workers send (without
                # --allowed-hosts: MLflow's default list and the pod's own names, which are not the Service's).
                allowed = params["hosts"].split(",") if params["hosts"] else get_default_allowed_hosts()
                assert is_allowed_host_header(allowed, f"{match[1]}:{port}"), \
                    f"{match[1]}:{port} is not among the server's --allowed-hosts {allowed}: MLflow refuses the workers"
                probe = container.get("readinessProbe", {}).get("httpGet")
                assert probe is None or (probe["path"] == "/health" and probe["port"] == params["port"])
            reached += 1
    assert reached, "no worker reaches a sweep server through a Service of the README"


def test_the_readme_has_the_cluster_recipes() -> None:
    """The recipes the README promises are there (a parser that found none would pass every check)."""
    arrays = [b for b in SCRIPTS if "#SBATCH --array=" in b.code and "#SBATCH --gres=gpu:1" in b.code]
    assert arrays and all(re.search(r"^exec sweep run .*--storage postgresql://", b.code.replace("\\\n", " "), re.M)
                          for b in arrays)
    kinds = [(doc["kind"], doc["spec"].get("completionMode")) for doc in _all_documents()]
    assert {("Deployment", None), ("Service", None), ("Job", "Indexed")} <= set(kinds)
    (indexed,) = [doc for doc in _all_documents() if doc["spec"].get("completionMode") == "Indexed"]
    (worker,) = pod_spec(indexed)["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_a_misspelt_flag_a_shell_form_and_a_written_password_fail_the_check() -> None:
    """The checks can fail: the README's blocks, each broken in one way."""
    (array,) = [b for b in SCRIPTS if "#SBATCH --array=" in b.code]
    (workers,) = [b for b in MANIFESTS if "completionMode: Indexed" in b.code]
    broken = {
        "No such option: --max-retry": Block(array.line, "bash", array.code.replace("--max-retries", "--max-retry"), None),
        "exec sweep, or trap": Block(array.line, "bash", array.code.replace("exec sweep", "sweep"), None),
        "valid integer": Block(workers.line, "yaml", workers.code.replace('"--trials", "200"', '"--trials", "all"'), None),
        "exec form": Block(workers.line, "yaml", workers.code.replace('command: ["sweep", "run",', 'command: ["sh", "-c", "sweep run",'), None),
        "a password in a URL": Block(workers.line, "yaml", workers.code.replace("sweeper@", "sweeper:pw@"), None),
        "FailJob on": Block(workers.line, "yaml", workers.code.replace("values: [1, 2, 70]", "values: [1, 2, 70, 75]"), None),
        "restartPolicy": Block(workers.line, "yaml", workers.code.replace("restartPolicy: Never", "restartPolicy: OnFailure"), None),
    }
    for said, block in broken.items():
        assert block.code != (array if block.lang == "bash" else workers).code, said
        with pytest.raises(AssertionError, match=re.escape(said)):
            (check_manifests if block.lang == "yaml" else check_script)(block)

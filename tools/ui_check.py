"""Check, in headless Chromium, which view MLflow's UI opens for the addresses sweeplab gives out.

MLflow 3.x's UI has two views: GenAI (sidebar Traces/Sessions/Judges/Agent versions, a run's
breadcrumb "Evaluations", a welcome page at its root) and model training (sidebar Runs/Models/
Traces/Model registry, breadcrumb "Runs"). Which one a page shows comes from ``workflowType`` in
the query *inside* the hash route (``#/experiments/1/runs/ID?workflowType=machine_learning``),
else from the browser's local storage (``mlflow.workflowType_v1``, default GenAI, set only by the
sidebar's toggle); the experiment's ``mlflow.experimentKind`` tag is not read. Each address is
opened in a fresh browser profile, as a newcomer's browser: empty local storage.

Given a store folder, this script starts ``sweep ui`` on a free port and checks:

- every address ``sweep ui`` prints (read from its output; the first is where the UI opens);
- in each printed list of runs (the trials side by side), a real click on the first trial's
  name: the page it lands on;
- every link in each sweep's description (the parent run's ``mlflow.note.content``), by a real
  click on the parent run's page (MLflow opens them in a new tab);
- every MLflow link in ``sweep report``'s page (its root, ``http://127.0.0.1:5000/`` on a
  store of this machine, replaced by the UI started here).

For each it prints the address, the view (``model-training``, ``GenAI`` or ``unknown``, from the
sidebar's links and the breadcrumb), whether MLflow's assistant panel is open, and the
screenshot's path. It exits 1 if any page is in the GenAI view, is unknown, or is MLflow's
welcome page; 2 if it could not run (no playwright, no Chromium, the UI did not start).

Needs, outside sweeplab's environment (a developer tool, not part of the package)::

    apt-get install -y chromium          # Debian's Chromium: no browser download
    python -m venv /tmp/ui/venv && /tmp/ui/venv/bin/pip install playwright

and is run with that interpreter, pointing at sweeplab's ``sweep`` (default: ``.venv/bin/sweep``
of this checkout, else ``sweep`` on PATH)::

    /tmp/ui/venv/bin/python tools/ui_check.py /tmp/ui/mlruns --out /tmp/ui/check
    /tmp/ui/venv/bin/python tools/ui_check.py mlruns --sweep "/work/main/.venv/bin/sweep" --no-report
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

REPO = Path(__file__).resolve().parent.parent
#: Sidebar links only the GenAI view shows; "Model registry" only the model-training view.
GENAI_LINKS = {"Judges", "Sessions", "Agent versions", "Evaluation runs", "MCP registry", "Prompts"}
ML_LINKS = {"Model registry"}
#: Where ``sweep report`` points its links on a store of this machine (``report.LOCAL_UI``).
REPORT_UI = "http://127.0.0.1:5000/"
MLFLOW_LINE = re.compile(r"^(\d{4}/\d\d/\d\d \d\d:\d\d:\d\d |Registry store URI )")
RUN_HREF = re.compile(r"^#/experiments/\d+/runs/[0-9a-f]{32}\b")

_PAGE_FACTS = """() => {
  const texts = sel => [...document.querySelectorAll(sel)].map(e => e.innerText.trim()).filter(Boolean);
  const body = document.body.innerText;
  return {
    nav: texts('aside nav a'),
    crumbs: texts('[class*=breadcrumb] a, nav[aria-label*=readcrumb] a'),
    welcome: body.includes('Welcome to MLflow'),
    assistant: [...document.querySelectorAll('textarea, input')].some(e => (e.placeholder || '').startsWith('Ask a question')
        && e.getClientRects().length > 0 && e.getBoundingClientRect().right <= window.innerWidth),
    shared: body.includes("You're viewing a shared view"),
  };
}"""
_FIRST_CHARTS = """() => {
  const out = [];
  for (const section of document.querySelectorAll('[data-testid=experiment-view-compare-runs-section-header]')) {
    const cards = section.closest('.du-bois-light-collapse-item')?.querySelectorAll('[data-testid=experiment-view-compare-runs-card] h4') || [];
    out.push(section.innerText.split('\\n')[0].trim() + ': ' + [...cards].slice(0, 4).map(h => h.title || h.innerText).join(', '));
  }
  return out.slice(0, 2).join(' / ');
}"""


@dataclass
class Check:
    what: str
    url: str
    view: str = "unknown"
    landed: str = ""
    welcome: bool = False
    assistant: bool = False
    shot: str = ""
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.view == "model-training" and not self.welcome


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sweep_command(given: str | None) -> list[str]:
    if given:
        return shlex.split(given)
    local = REPO / ".venv" / "bin" / "sweep"
    if local.exists():
        return [str(local)]
    found = shutil.which("sweep")
    if not found:
        raise SystemExit("ui_check: no `sweep` (give --sweep)")
    return [found]


class UI:
    """``sweep ui`` on a free port, in its own process group (it execs MLflow, which starts
    uvicorn workers): its printed lines, and a stop that ends the group."""

    def __init__(self, sweep: list[str], store: Path, port: int, workdir: Path, timeout: float):
        env = {**os.environ, "COLUMNS": "100000", "NO_COLOR": "1", "TERM": "dumb"}
        # An empty working folder: uvicorn puts it on sys.path, where a stray click.py would shadow click.
        self.process = subprocess.Popen([*sweep, "ui", "--store-dir", str(store), "--port", str(port)],
                                        cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True, start_new_session=True)
        self.lines: list[str] = []
        self.log: list[str] = []
        threading.Thread(target=self._read, args=(self.process.stdout, self.lines), daemon=True).start()
        threading.Thread(target=self._read, args=(self.process.stderr, self.log), daemon=True).start()
        self.root = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                time.sleep(0.5)
                raise RuntimeError("sweep ui exited {}:\n{}".format(
                    self.process.returncode, "\n".join(self.lines + self.log[-15:])))
            try:
                with urllib.request.urlopen(self.root + "health", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"sweep ui did not answer on {self.root} within {timeout:.0f} s")

    @staticmethod
    def _read(stream, into: list[str]) -> None:
        for line in stream:
            into.append(line.rstrip("\n"))

    def printed(self) -> list[str]:
        """What ``sweep ui`` printed itself: its stdout less MLflow's own lines (the access log)."""
        return [line for line in self.lines if not MLFLOW_LINE.match(line)]

    def addresses(self) -> list[str]:
        """The addresses ``sweep ui`` printed, in order."""
        found = []
        for line in self.printed():
            for url in re.findall(r"https?://\S+", line):
                if url not in found:
                    found.append(url)
        return found

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            except ProcessLookupError:
                pass


def _api(root: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(root + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.load(reply)


def _parents(root: str) -> list[dict]:
    """Each sweep's parent run (``sweeplab.role = 'sweep'``) in the store: id, experiment, name,
    description."""
    experiments = _api(root, "ajax-api/2.0/mlflow/experiments/search", {"max_results": 1000}).get("experiments", [])
    ids = [e["experiment_id"] for e in experiments]
    if not ids:
        return []
    runs = _api(root, "ajax-api/2.0/mlflow/runs/search", {
        "experiment_ids": ids, "filter": "tags.`sweeplab.role` = 'sweep'", "max_results": 1000}).get("runs", [])
    found = []
    for run in runs:
        tags = {t["key"]: t["value"] for t in run.get("data", {}).get("tags", [])}
        found.append({"run_id": run["info"]["run_id"], "experiment_id": run["info"]["experiment_id"],
                      "name": run["info"].get("run_name", ""), "note": tags.get("mlflow.note.content", "")})
    return found


def _report_links(sweep: list[str], store: Path, workdir: Path, root: str) -> tuple[list[str], str]:
    """The MLflow addresses in ``sweep report``'s page, pointed at ``root``."""
    out = workdir / "report.html"
    done = subprocess.run([*sweep, "report", "--store-dir", str(store), "--out", str(out)], cwd=workdir,
                          capture_output=True, text=True, env={**os.environ, "COLUMNS": "100000"}, timeout=600)
    if done.returncode != 0 or not out.exists():
        return [], f"sweep report failed ({done.returncode}): {(done.stdout + done.stderr).strip()[-300:]}"
    links = []
    for href in re.findall(r'href="([^"]+)"', out.read_text(encoding="utf-8")):
        href = href.replace("&amp;", "&")
        if href.startswith(REPORT_UI) and href not in links:
            links.append(root + href[len(REPORT_UI):])
    return links, ""


class Browser:
    def __init__(self, chromium: str, shots: Path, timeout: float):
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        self.browser = self._playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        self.shots = shots
        self.timeout_ms = timeout * 1000
        self.count = 0

    def close(self) -> None:
        self.browser.close()
        self._playwright.stop()

    def context(self):
        """A fresh profile: empty local storage, as a browser that never opened MLflow's UI."""
        return self.browser.new_context(viewport={"width": 1600, "height": 1000})

    def settle(self, page) -> dict:
        """The page's facts once MLflow has drawn its sidebar and they stop changing."""
        page.locator("aside nav a").first.wait_for(timeout=self.timeout_ms)
        last, deadline = None, time.monotonic() + self.timeout_ms / 1000
        while time.monotonic() < deadline:
            page.wait_for_timeout(1500)
            facts = page.evaluate(_PAGE_FACTS)
            if facts == last:
                return facts
            last = facts
        return last

    def record(self, check: Check, page, name: str) -> Check:
        facts = self.settle(page)
        nav = set(facts["nav"])
        if nav & GENAI_LINKS or "Evaluations" in facts["crumbs"] or facts["welcome"] and not nav & ML_LINKS:
            check.view = "GenAI"
        elif nav & ML_LINKS:
            check.view = "model-training"
        check.landed = page.url
        check.welcome = facts["welcome"]
        check.assistant = facts["assistant"]
        if facts["shared"]:
            check.note = (check.note + "; " if check.note else "") + "a shared view"
        charts = page.evaluate(_FIRST_CHARTS)
        if charts:
            check.note = (check.note + "; " if check.note else "") + f"charts first: {charts}"
        self.count += 1
        path = self.shots / f"{self.count:02d}-{name}.png"
        page.screenshot(path=str(path))
        check.shot = str(path)
        return check

    def open(self, what: str, url: str, name: str) -> Check:
        with self.context() as context:
            page = context.new_page()
            page.goto(url, wait_until="load", timeout=self.timeout_ms)
            return self.record(Check(what, url), page, name)

    def click_first_trial(self, url: str, name: str) -> Check | None:
        """Open the list of runs at ``url`` and click the first run's name in it."""
        with self.context() as context:
            page = context.new_page()
            page.goto(url, wait_until="load", timeout=self.timeout_ms)
            links = page.locator('a[href^="#/experiments/"]').filter(has_text=re.compile(r"\S"))
            try:
                links.first.wait_for(timeout=self.timeout_ms)
            except Exception:
                return None
            self.settle(page)
            for i in range(links.count()):
                link = links.nth(i)
                href = link.get_attribute("href") or ""
                if RUN_HREF.match(href) and link.is_visible():
                    text = link.inner_text().strip()
                    link.click()
                    page.wait_for_url(re.compile(r"/runs/[0-9a-f]{32}"), timeout=self.timeout_ms)
                    return self.record(Check(f"clicked {text!r} in the list", href), page, name)
            return None

    def click_description(self, parent: dict, page_url: str, name: str) -> list[Check]:
        """Open the parent run's page and click each link of its description (a new tab each)."""
        hrefs = re.findall(r"\]\(([^)\s]+)\)", parent["note"])
        checks = []
        for n, href in enumerate(dict.fromkeys(hrefs)):
            with self.context() as context:
                page = context.new_page()
                page.goto(page_url, wait_until="load", timeout=self.timeout_ms)
                link = page.locator(f'a[href="{href}"]').first
                try:
                    link.wait_for(timeout=self.timeout_ms)
                except Exception:
                    checks.append(Check(f"description link {href}", href, note="not found on the page"))
                    continue
                text = link.inner_text().strip()
                with context.expect_page(timeout=self.timeout_ms) as opened:
                    link.click()
                tab = opened.value
                tab.wait_for_load_state("load", timeout=self.timeout_ms)
                checks.append(self.record(Check(f"description of {parent['name']}: {text!r}", href), tab,
                                          f"{name}-{n}"))
        return checks


def _print(check: Check) -> None:
    mark = "ok  " if check.ok else "FAIL"
    print(f"{mark} {check.what}\n     address: {check.url}")
    if check.landed and check.landed != check.url:
        print(f"     landed:  {check.landed}")
    extra = ", MLflow's welcome page" if check.welcome else ""
    print(f"     view: {check.view}{extra}; assistant panel {'open' if check.assistant else 'closed'}")
    if check.note:
        print(f"     {check.note}")
    if check.shot:
        print(f"     screenshot: {check.shot}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("store", type=Path, help="the sweep store folder (sweep ui --store-dir)")
    parser.add_argument("--sweep", help="command that runs sweeplab's CLI (default: .venv/bin/sweep, else sweep)")
    parser.add_argument("--out", type=Path, help="folder for the screenshots (default: a new temporary one)")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="Chromium to drive (default: Debian's)")
    parser.add_argument("--timeout", type=float, default=90, help="seconds to wait for the UI and for each page")
    parser.add_argument("--no-report", action="store_true", help="skip the links of sweep report's page")
    args = parser.parse_args(argv)
    if importlib.util.find_spec("playwright") is None:
        print("ui_check: needs playwright (pip install playwright) in the interpreter that runs it", file=sys.stderr)
        return 2
    if not Path(args.chromium).exists():
        print(f"ui_check: no Chromium at {args.chromium} (apt-get install -y chromium)", file=sys.stderr)
        return 2
    store = args.store.resolve()
    shots = (args.out or Path(tempfile.mkdtemp(prefix="ui-check-"))).resolve()
    shots.mkdir(parents=True, exist_ok=True)
    sweep = _sweep_command(args.sweep)
    checks: list[Check] = []
    with tempfile.TemporaryDirectory(prefix="ui-check-work-") as work:
        try:
            ui = UI(sweep, store, _free_port(), Path(work), args.timeout)
        except RuntimeError as exc:
            print(f"ui_check: {exc}", file=sys.stderr)
            return 2
        browser = None
        try:
            print("sweep ui printed:")
            for line in ui.printed():
                print(f"  | {line}")
            addresses = ui.addresses()
            if not addresses:
                print("ui_check: sweep ui printed no address", file=sys.stderr)
                return 2
            browser = Browser(args.chromium, shots, args.timeout)
            for n, url in enumerate(addresses):
                what = "first address sweep ui prints" if n == 0 else f"address {n + 1} sweep ui prints"
                checks.append(browser.open(what, url, f"printed-{n + 1}"))
                if "/runs?" in url or "/compare-experiments/" in url:
                    clicked = browser.click_first_trial(url, f"printed-{n + 1}-click")
                    if clicked:
                        checks.append(clicked)
            report = []
            if not args.no_report:
                report, problem = _report_links(sweep, store, Path(work), ui.root)
                if problem:
                    print(f"ui_check: {problem}", file=sys.stderr)
            parent_pages = {}
            for n, url in enumerate(report):
                checks.append(browser.open("sweep report's link", url, f"report-{n + 1}"))
                match = re.search(r"#/experiments/\d+/runs/([0-9a-f]{32})", url)
                if match:
                    parent_pages[match.group(1)] = url
            for n, parent in enumerate(_parents(ui.root)):
                # The parent's page at the report's address for it, else its plain route.
                page_url = parent_pages.get(parent["run_id"],
                                            urljoin(ui.root, f"#/experiments/{parent['experiment_id']}/runs/{parent['run_id']}"))
                checks.extend(browser.click_description(parent, page_url, f"description-{n + 1}"))
        finally:
            if browser:
                browser.close()
            ui.stop()
    print()
    for check in checks:
        _print(check)
    bad = [c for c in checks if not c.ok]
    print(f"\n{len(checks) - len(bad)} of {len(checks)} pages in the model-training view; screenshots in {shots}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

"""The README's Python code runs as a reader would paste it.

Every ```python block of README.md is run, in the README's order, in a fresh interpreter whose
working directory is one temporary folder shared by all of them (as a reader's folder would be):
the blocks that open with a file name (``# my_trainer.py``, ``# my_trainer.toml``, in any fenced
block) are first written there under that name, so that a later block can import or read them,
and a block may read what an earlier one left (the store in ``mlruns/``). Hugging Face is offline.

A block that cannot run here (it needs a GPU, a cluster, a server, the network) says so in the
README: an HTML comment ``<!-- not run: REASON -->`` on the last non-blank line before it, which
the reader does not see. ``bash`` blocks are not run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

OPENING = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[ \t]*$")
NOT_RUN = re.compile(r"^\s*<!--\s*not run:(?P<reason>.*?)-->\s*$")
FILE_NAME = re.compile(r"^# (?P<name>[\w.-]+\.(?:py|toml))\s*$")

#: Blocks known to fail, by a line of theirs, with why: each is an xfail that must fail (strict),
#: so that the mark goes once the block is fixed.
KNOWN_FAILING: dict[str, str] = {}


@dataclass(frozen=True)
class Block:
    """One fenced code block of a markdown file."""

    line: int              # the line of its opening fence, from 1
    lang: str              # what follows the fence: python, bash, toml... ('' for none)
    code: str              # its text, without the indentation of its fence
    not_run: str | None    # the reason of a ``<!-- not run: ... -->`` right before it

    @property
    def file_name(self) -> str | None:
        """The file the block is, when its first line names one (``# my_trainer.py``)."""
        match = FILE_NAME.match(self.code.split("\n", 1)[0])
        return match["name"] if match else None


def code_blocks(text: str, source: str = "README.md") -> list[Block]:
    """The fenced blocks of markdown ``text`` in order (a block indented under a list item loses
    that indentation); an unclosed fence is an error."""
    lines, blocks, i = text.splitlines(), [], 0
    while i < len(lines):
        opening = OPENING.match(lines[i])
        if not opening:
            i += 1
            continue
        start, indent, body = i, opening["indent"], []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        if i == len(lines):
            raise ValueError(f"{source}:{start + 1}: a code block that is never closed")
        before = next((line for line in reversed(lines[:start]) if line.strip()), "")
        marker = NOT_RUN.match(before)
        blocks.append(Block(start + 1, opening["lang"], "\n".join(body) + "\n", marker["reason"].strip() if marker else None))
        i += 1
    return blocks


BLOCKS = code_blocks(README.read_text(encoding="utf-8"))
PYTHON = [block for block in BLOCKS if block.lang == "python"]


def _param(block: Block) -> object:
    marks = []
    if block.not_run is not None:
        marks.append(pytest.mark.skip(reason=f"README.md:{block.line} not run: {block.not_run}"))
    known = [why for line, why in KNOWN_FAILING.items() if line in block.code]
    if known:
        marks.append(pytest.mark.xfail(strict=True, reason=known[0]))
    return pytest.param(block, id=f"README.md:{block.line}", marks=marks)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reader's folder, holding every file the README's blocks name."""
    root = tmp_path_factory.mktemp("readme")
    for block in BLOCKS:
        if block.file_name:
            (root / block.file_name).write_text(block.code, encoding="utf-8")
    return root


def _env() -> dict[str, str]:
    """The test's environment, offline, without a tracking store chosen for it (a block uses the
    folder's ``mlruns/``, as the README says)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SWEEPLAB_"))}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    return env


@pytest.mark.parametrize("block", [_param(block) for block in PYTHON])
def test_a_python_block_of_the_readme_runs_as_written(block: Block, folder: Path) -> None:
    done = subprocess.run([sys.executable, "-"], input=block.code, cwd=folder, env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, f"README.md:{block.line} failed:\n{block.code}\n{done.stderr[-3000:]}"


def test_the_readme_has_the_blocks_a_reader_runs() -> None:
    """The parser finds the README's code (a parser that found none would pass every block)."""
    names = {block.file_name for block in BLOCKS}
    assert {"my_trainer.py", "my_trainer.toml"} <= names
    assert any("sweeplab.run(" in block.code and block.not_run is None for block in PYTHON)
    assert all(block.not_run for block in PYTHON if block.not_run is not None)  # a reason, not an empty marker
    assert all(any(line in block.code for block in PYTHON) for line in KNOWN_FAILING)  # no stale entry


def test_a_not_run_marker_an_indented_block_and_a_named_file_are_read() -> None:
    text = "\n".join([
        "Text.", "", "<!-- not run: needs a GPU -->", "", "```python", "import torch", "```",
        "- item", "", "  ```python", "  # tool.py", "  def f():", "      return 1", "", "  ```",
        "```bash", "echo hi", "```", "<!-- not run: -->", "```python", "pass", "```",
    ])
    gpu, tool, shell, empty = code_blocks(text)
    assert (gpu.line, gpu.lang, gpu.code, gpu.not_run) == (5, "python", "import torch\n", "needs a GPU")
    assert tool.code == "# tool.py\ndef f():\n    return 1\n\n" and tool.file_name == "tool.py" and tool.not_run is None
    assert shell.lang == "bash" and shell.not_run is None
    assert empty.not_run == ""  # caught by test_the_readme_has_the_blocks_a_reader_runs
    with pytest.raises(ValueError, match="never closed"):
        code_blocks("```python\nprint(1)\n")

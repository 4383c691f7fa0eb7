from __future__ import annotations

import io
from pathlib import Path

import torch
from PIL import Image

from sweeplab.datasets.cache import PrepCache
from sweeplab.datasets.images import decode_images


def _jpeg(color: tuple[int, int, int], size: tuple[int, int] = (40, 20)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    return buf.getvalue()


def test_decode_resizes_and_reports_failures(tmp_path: Path) -> None:
    good = tmp_path / "good.jpg"
    good.write_bytes(_jpeg((255, 0, 0)))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    pixels, failed = decode_images([good, broken, _jpeg((0, 0, 255)), tmp_path / "missing.jpg"], size=16)
    assert pixels.shape == (4, 3, 16, 16) and pixels.dtype == torch.uint8
    assert failed == [1, 3]
    assert pixels[0, 0].float().mean() > 200 and pixels[0, 2].float().mean() < 60
    assert pixels[2, 2].float().mean() > 200
    assert int(pixels[1].sum()) == 0


def test_cache_builds_once_per_key_and_persists(tmp_path: Path) -> None:
    calls = []

    def build() -> dict:
        calls.append(1)
        return {"x": torch.arange(3)}

    cache = PrepCache(tmp_path / "cache")
    first = cache.get("kind", {"a": 1}, build)
    again = cache.get("kind", {"a": 1}, build)
    other = cache.get("kind", {"a": 2}, build)
    assert len(calls) == 2 and first is again and torch.equal(other["x"], first["x"])
    fresh = PrepCache(tmp_path / "cache")  # a new process: read from disk, not rebuilt
    assert torch.equal(fresh.get("kind", {"a": 1}, build)["x"], torch.arange(3))
    assert len(calls) == 2 and fresh.hits == 1


def test_truncated_cache_file_is_rebuilt(tmp_path: Path) -> None:
    cache = PrepCache(tmp_path)
    cache.get("k", {}, lambda: torch.ones(2))
    path = next(tmp_path.glob("k-*.pt"))
    path.write_bytes(b"garbage")
    assert torch.equal(PrepCache(tmp_path).get("k", {}, lambda: torch.zeros(2)), torch.zeros(2))


BUILD_IN_ANOTHER_PROCESS = """
import sys, time
from pathlib import Path
from sweeplab.datasets.cache import PrepCache

folder, log = Path(sys.argv[1]), Path(sys.argv[2])
def build():
    with log.open("a") as out:
        out.write("built\\n")
    time.sleep(1.0)  # long enough for the other process to ask meanwhile
    return {"x": 1}
print(PrepCache(folder).get("tokens", {"max_len": 8}, build)["x"])
"""


def test_processes_that_need_an_entry_at_once_build_it_once(tmp_path: Path) -> None:
    """Two workers of one machine (or one Ray node) start together on an empty cache: one builds
    the entry, the other waits for it and reads it."""
    import subprocess
    import sys

    log = tmp_path / "builds.log"
    command = [sys.executable, "-c", BUILD_IN_ANOTHER_PROCESS, str(tmp_path / "cache"), str(log)]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    assert [p.communicate(timeout=120)[0].strip() for p in processes] == ["1", "1"]
    assert log.read_text().splitlines() == ["built"]

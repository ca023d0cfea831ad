"""Seed samples for DaaR's domain centroids, written by the instruct model when the user has none
(ALGORITHMS.md 2.1).

    records, stats = synthesize_seeds("demo", {"arithmetic": "word problems ...", ...},
                                      n_per_domain=10)

Per domain: the first `warmup` generations are asked with only the domain's name and one-line
description; later ones are shown 3 accepted pairs and asked for something unlike them. A
candidate is accepted only when its cosine similarity to every accepted pair of its domain is
below `max_similarity`, until `n_per_domain` are accepted or `max_attempts` generations are
spent. Candidates are compared in the centroids' own space: the mean of the model's input token
embeddings over `render_text(...)`.

The acceptance loop (`grow_seeds`) is pure: it takes `generate` and `embed` callables. The Ray
side runs one `SeedWriter` actor per domain, all domains in parallel.
"""

from __future__ import annotations

import logging
import random
import re
import time
import zlib
from collections.abc import Callable

import numpy as np

from raysel.config import UserError
from raysel.daar.features import masked_mean, render_text

log = logging.getLogger(__name__)

UNLIKE_EXAMPLES = 3  # accepted pairs quoted in an "unlike these" prompt (the reference's number)

_FORMAT = (
    "Reply with exactly three lines in this format:\n"
    "Instruction: <a question or task a user could ask>\n"
    "Input: <extra text the task needs, or nothing>\n"
    "Output: <a good answer>"
)


# --- prompts and parsing (pure) ---------------------------------------------------------------

def warmup_prompt(domain: str, description: str) -> str:
    return (f"Write ONE new example for the domain \"{domain}\": {description}.\n\n{_FORMAT}")


def unlike_prompt(domain: str, description: str, examples: list[dict]) -> str:
    shown = "\n\n".join(f"Example {i}:\n{render_text(e['instruction'], e.get('input', ''), e['output'])}"
                        for i, e in enumerate(examples, 1))
    return (f"Here are examples for the domain \"{domain}\": {description}.\n\n{shown}\n\n"
            f"Write ONE new example for the same domain, on a different topic and with different "
            f"wording from all of the examples above.\n\n{_FORMAT}")


# A label at the start of a line, after any list/quote/heading marker: "Instruction:", "### Input:".
# Small models drift from the labels asked for: of 8 warm-up replies of SmolLM2-135M-Instruct, 3
# began "Instructions:" and 2 "Question:". Such synonyms count as the label they stand for.
_LABEL = re.compile(r"^[ \t>#*\-]*(instructions?|question|task|input|context|output|response|answer|solution)"
                    r"[ \t]*:[ \t]*", re.IGNORECASE | re.MULTILINE)
_FIELD = {"instruction": "instruction", "instructions": "instruction", "question": "instruction",
          "task": "instruction", "input": "input", "context": "input", "output": "output",
          "response": "output", "answer": "output", "solution": "output"}
# What small models write for "no input"; the format's own placeholders ("<...>", "(your question)") too.
_EMPTY = {"", "none", "n/a", "na", "-", "empty", "nothing", "null", '""', "''"}
_PLACEHOLDER = re.compile(r"^(<[^<>\n]*>|\[[^\[\]\n]*\]|\([^()\n]*\))$")


def parse_pair(text: str) -> dict | None:
    """{"instruction", "input", "output"} from a generation in the prompts' format, or None.

    Tolerates chatter before the first label, markdown bold or heading markers, any case of the
    labels, Question/Answer for Instruction/Output and a missing Input line. Only the first pair
    counts: a label seen again with a value already given ends it."""
    text = re.sub(r"\*\*|__", "", text)
    labels = list(_LABEL.finditer(text))
    fields: dict[str, str] = {}
    for i, m in enumerate(labels):
        name = _FIELD[m.group(1).lower()]
        if name != "instruction" and "instruction" not in fields:
            continue  # chatter that happens to start with "Output:" before the pair
        end = labels[i + 1].start() if i + 1 < len(labels) else len(text)
        value = _clean(text[m.end():end])
        if fields.get(name):
            break
        fields[name] = value
    pair = {k: fields.get(k, "") for k in ("instruction", "input", "output")}
    if not pair["instruction"] or not pair["output"]:
        return None
    return pair


def _clean(value: str) -> str:
    value = value.strip().strip("`").strip()
    if value.lower() in _EMPTY or _PLACEHOLDER.match(value):
        return ""
    return value


# --- the acceptance loop (pure) ---------------------------------------------------------------

def grow_seeds(generate: Callable[[str], str], embed: Callable[[list[str]], np.ndarray], domain: str,
               description: str, n: int, max_similarity: float, max_attempts: int, warmup: int,
               rng: random.Random) -> tuple[list[dict], dict]:
    """Generate until `n` pairs are accepted or `max_attempts` generations are spent.

    A candidate is rejected when it does not parse, repeats an accepted pair exactly, or has
    cosine similarity >= max_similarity to any accepted pair."""
    accepted: list[dict] = []
    vectors: list[np.ndarray] = []  # unit vectors of the accepted pairs
    stats = {"attempts": 0, "accepted": 0, "rejected_unparsable": 0, "rejected_similar": 0}
    while len(accepted) < n and stats["attempts"] < max_attempts:
        stats["attempts"] += 1
        pair = parse_pair(generate(_next_prompt(domain, description, accepted, stats["attempts"], warmup, rng)))
        if pair is None:
            stats["rejected_unparsable"] += 1
            continue
        vector = _unit(np.asarray(embed([render_text(**pair)]), dtype=np.float64)[0])
        if _is_repeat(pair, accepted) or _too_similar(vector, vectors, max_similarity):
            stats["rejected_similar"] += 1
            continue
        accepted.append({"domain": domain, **pair})
        vectors.append(vector)
    stats["accepted"] = len(accepted)
    return accepted, stats


def _next_prompt(domain: str, description: str, accepted: list[dict], attempt: int, warmup: int,
                 rng: random.Random) -> str:
    if attempt <= warmup or not accepted:
        return warmup_prompt(domain, description)
    return unlike_prompt(domain, description, rng.sample(accepted, min(UNLIKE_EXAMPLES, len(accepted))))


def _unit(v: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(v)
    return v / norm if norm > 0 else v


def _is_repeat(pair: dict, accepted: list[dict]) -> bool:
    key = _norm_key(pair)
    return any(_norm_key(a) == key for a in accepted)


def _norm_key(pair: dict) -> tuple[str, ...]:
    return tuple(" ".join(pair[k].lower().split()) for k in ("instruction", "input", "output"))


def _too_similar(vector: np.ndarray, vectors: list[np.ndarray], max_similarity: float) -> bool:
    return bool(vectors) and float(np.max(np.stack(vectors) @ vector)) >= max_similarity


# --- the Ray side -----------------------------------------------------------------------------

class SeedWriter:
    """One domain's writer: the instruct model generates (sampling, chat template) and embeds
    (mean of the input token embeddings, the centroid space)."""

    def __init__(self, model_path: str, threads: int, seed: int, max_new_tokens: int,
                 trust_remote_code: bool = False):
        import torch

        from raysel.models import load_model, load_tokenizer

        torch.set_num_threads(threads)
        torch.manual_seed(seed)  # once: each generation then draws fresh, reproducible samples
        self.model = load_model(model_path, trust_remote_code=trust_remote_code)
        self.tokenizer = load_tokenizer(model_path, trust_remote_code=trust_remote_code)
        self.max_new_tokens = max_new_tokens

    def generate(self, prompt: str) -> str:
        import torch

        text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                  add_generation_prompt=True)
        # the template already wrote any BOS token; adding it again would shift the model off-distribution
        enc = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            out = self.model.generate(**enc, do_sample=True, temperature=0.8, top_p=0.95,
                                      max_new_tokens=self.max_new_tokens, pad_token_id=self.tokenizer.pad_token_id)
        return self.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    def embed(self, texts: list[str]) -> np.ndarray:
        import torch

        enc = self.tokenizer(list(texts), padding=True, return_tensors="pt")
        with torch.inference_mode():
            vectors = masked_mean(self.model.get_input_embeddings()(enc["input_ids"]), enc["attention_mask"])
        return vectors.numpy()

    def grow(self, domain: str, description: str, n: int, max_similarity: float, max_attempts: int,
             warmup: int, seed: int) -> tuple[list[dict], dict]:
        return grow_seeds(self.generate, self.embed, domain, description, n, max_similarity,
                          max_attempts, warmup, random.Random(seed))


def synthesize_seeds(model_path: str, domains: dict[str, str], n_per_domain: int = 10,
                     max_similarity: float = 0.85, max_attempts: int = 100, warmup: int = 3, seed: int = 0,
                     max_new_tokens: int = 200, trust_remote_code: bool = False) -> tuple[list[dict], dict]:
    """Seed records for every domain ({"domain", "instruction", "input", "output"}, in the order
    of `domains`) and stats per domain. Ray must be initialised by the caller."""
    import ray

    writer_cls = ray.remote(num_cpus=1)(SeedWriter)
    actors, pending = {}, {}
    for domain, description in domains.items():
        domain_seed = _domain_seed(seed, domain)
        actors[domain] = writer_cls.remote(model_path, 1, domain_seed, max_new_tokens, trust_remote_code)
        ref = actors[domain].grow.remote(domain, description, n_per_domain, max_similarity, max_attempts,
                                         warmup, domain_seed)
        pending[ref] = domain
    start, results = time.monotonic(), {}
    try:
        while pending:
            [ref], _ = ray.wait(list(pending))
            domain = pending.pop(ref)
            results[domain] = ray.get(ref)
            ray.kill(actors.pop(domain))  # frees its CPU for a domain still waiting for one
            _report(domain, *results[domain], n_per_domain, time.monotonic() - start)
    finally:
        for actor in actors.values():  # the rest, when a domain failed
            ray.kill(actor)
    records = [r for domain in domains for r in results[domain][0]]
    return records, {domain: results[domain][1] for domain in domains}


def _domain_seed(seed: int, domain: str) -> int:
    # from the name, not the position: a domain's seeds do not change when another is added
    return zlib.crc32(f"{seed}:{domain}".encode())


def _report(domain: str, records: list[dict], stats: dict, n: int, seconds: float) -> None:
    if not records:
        raise UserError(
            f"daar: the model wrote no usable seed for domain {domain!r} in {stats['attempts']} attempts "
            f"({stats['rejected_unparsable']} unparsable, {stats['rejected_similar']} too similar). "
            "Raise daar.synth_max_attempts, or give a seeds file (jsonl: domain, instruction, input, "
            "output) with daar.seed_source=file.")
    if len(records) < n:
        log.warning("domain %r: only %d of %d seeds accepted in %d attempts; going on with them",
                    domain, len(records), n, stats["attempts"])
    log.info("domain %r: %d seeds in %d attempts (%d unparsable, %d too similar), %.0fs",
             domain, len(records), stats["attempts"], stats["rejected_unparsable"],
             stats["rejected_similar"], seconds)

"""Seed synthesis for DaaR: the parser and the acceptance loop (pure), and the Ray actors end to end."""

import random
import re
from collections import Counter

import numpy as np
import pytest

from raysel.config import UserError
from raysel.daar.features import render_text
from raysel.daar.synthesize import grow_seeds, parse_pair, synthesize_seeds, unlike_prompt, warmup_prompt

# --- prompts and parse_pair -------------------------------------------------------------------


def test_prompts_name_the_domain_and_the_format():
    warm = warmup_prompt("arithmetic", "word problems about prices")
    assert "arithmetic" in warm and "word problems about prices" in warm
    for label in ("Instruction:", "Input:", "Output:"):
        assert label in warm
    examples = [{"instruction": "Add 2 and 3.", "input": "", "output": "5"},
                {"instruction": "Halve it.", "input": "10", "output": "5"}]
    unlike = unlike_prompt("arithmetic", "word problems", examples)
    assert "Instruction: Add 2 and 3.\nOutput: 5" in unlike
    assert "Instruction: Halve it.\nInput: 10\nOutput: 5" in unlike
    assert "different" in unlike


@pytest.mark.parametrize("text, expected", [
    ("Instruction: What is 2 + 2?\nInput: \nOutput: 4",
     ("What is 2 + 2?", "", "4")),
    ("Sure! Here is a new example for you.\n\nInstruction: Name the capital of Peru.\nOutput: Lima is the capital.",
     ("Name the capital of Peru.", "", "Lima is the capital.")),
    ("**Instruction:** Translate the sentence.\n**Input:** Bonjour\n**Output:** Hello",
     ("Translate the sentence.", "Bonjour", "Hello")),
    ("### INSTRUCTION: Sum the list.\n### input: 1, 2, 3\n### output: 6",
     ("Sum the list.", "1, 2, 3", "6")),
    ("Instruction: A pen costs $2. How much do 3 pens cost?\nInput: None\nOutput: Step 1: 3 x 2 = 6.\nSo $6.",
     ("A pen costs $2. How much do 3 pens cost?", "", "Step 1: 3 x 2 = 6.\nSo $6.")),
    ("Question: Who wrote Hamlet?\nAnswer: William Shakespeare wrote it.",
     ("Who wrote Hamlet?", "", "William Shakespeare wrote it.")),
    ("Output: ignore me\nInstruction: Spell cat.\nOutput: c-a-t\n\nInstruction: Spell dog.\nOutput: d-o-g",
     ("Spell cat.", "", "c-a-t")),
])
def test_parse_pair_reads_realistic_generations(text, expected):
    pair = parse_pair(text)
    assert pair is not None
    assert (pair["instruction"], pair["input"], pair["output"]) == expected


@pytest.mark.parametrize("text", [
    "",
    "The answer is 42.",
    "I'd be happy to help with arithmetic! Let me think about a good example.",
    "Instruction: What is the capital of Chile?",  # no output
    "Instruction:\nInput: 3\nOutput: 5",  # no instruction
    "Instruction: <a question or task a user could ask>\nOutput: <a good answer>",  # the format, echoed
    "🌱🌲🌱 Output: sprout",
])
def test_parse_pair_rejects_garbage(text):
    assert parse_pair(text) is None


# --- grow_seeds with a scripted model ---------------------------------------------------------

def _pair(instruction, output, input=""):
    return render_text(instruction, input, output)


class BagOfWords:
    """A deterministic `embed`: word counts over a vocabulary grown as texts arrive."""

    def __init__(self):
        self.vocab = {}

    def __call__(self, texts):
        rows = []
        for text in texts:
            counts = Counter(re.findall(r"\w+", text.lower()))
            for word in counts:
                self.vocab.setdefault(word, len(self.vocab))
            rows.append(counts)
        out = np.zeros((len(texts), 4096))
        for i, counts in enumerate(rows):
            for word, c in counts.items():
                out[i, self.vocab[word]] = c
        return out


class Script:
    """A deterministic `generate`: canned replies in order, recording every prompt it was given."""

    def __init__(self, replies):
        self.replies, self.prompts = list(replies), []

    def __call__(self, prompt):
        self.prompts.append(prompt)
        return self.replies[len(self.prompts) - 1]


DISTINCT = [
    _pair("A shirt costs $20 and is 10% off. What is the new price?", "20 - 2 = 18, so $18."),
    _pair("Tom buys 3 apples at 50 cents each. How much does he pay?", "3 x 0.5 = 1.5 dollars."),
    _pair("Which river flows through Cairo?", "The Nile flows through Cairo."),
    _pair("Who painted the Mona Lisa?", "Leonardo da Vinci painted it."),
    _pair("Convert 5 kilometres to metres.", "5000 metres."),
    _pair("Name a prime number between 10 and 15.", "Eleven and thirteen are prime."),
]
NEAR_COPY = _pair("A shirt costs $20 and is 10% off. What is its new price?", "20 - 2 = 18, so $18.")


def _cos(a, b):
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _grow(replies, n=10, max_similarity=0.85, max_attempts=100, warmup=2, seed=0):
    script, embed = Script(replies), BagOfWords()
    records, stats = grow_seeds(script, embed, "math", "word problems", n, max_similarity, max_attempts,
                                warmup, random.Random(seed))
    return records, stats, script, embed


def test_grow_seeds_rejects_unparsable_duplicates_and_near_copies():
    replies = [DISTINCT[0], "no idea", DISTINCT[0], NEAR_COPY, DISTINCT[1],
               "**Instruction:** Who painted the Mona Lisa?\nOutput: Leonardo da Vinci painted it.",
               DISTINCT[2], "Instruction: only a question", DISTINCT[4]]
    records, stats, _, embed = _grow(replies, n=4, max_similarity=0.85)
    assert [r["instruction"] for r in records] == [
        "A shirt costs $20 and is 10% off. What is the new price?",
        "Tom buys 3 apples at 50 cents each. How much does he pay?",
        "Who painted the Mona Lisa?",
        "Which river flows through Cairo?",
    ]
    assert all(r["domain"] == "math" and set(r) == {"domain", "instruction", "input", "output"} for r in records)
    assert stats == {"attempts": 7, "accepted": 4, "rejected_unparsable": 1, "rejected_similar": 2}
    vectors = embed([render_text(r["instruction"], r["input"], r["output"]) for r in records])
    for i in range(len(vectors)):
        for j in range(i):
            assert _cos(vectors[i], vectors[j]) < 0.85


def test_near_copy_is_above_the_threshold_it_is_rejected_at():
    embed = BagOfWords()
    a, b = embed([DISTINCT[0], NEAR_COPY])
    assert _cos(a, b) >= 0.85  # else the test above would not test the similarity check


def test_every_accepted_pair_is_below_the_threshold_with_every_other():
    rng = random.Random(1)
    words = "price cost apple river city paint author year percent total sum buy sell".split()
    replies = [_pair(" ".join(rng.choices(words, k=4)), " ".join(rng.choices(words, k=3))) for _ in range(200)]
    records, stats, _, embed = _grow(replies, n=12, max_similarity=0.6, max_attempts=200)
    assert stats["accepted"] == len(records) >= 2
    assert stats["attempts"] == stats["accepted"] + stats["rejected_similar"] + stats["rejected_unparsable"]
    vectors = embed([render_text(r["instruction"], r["input"], r["output"]) for r in records])
    sims = [_cos(vectors[i], vectors[j]) for i in range(len(vectors)) for j in range(i)]
    assert max(sims) < 0.6


def test_attempt_cap_stops_the_loop():
    replies = [DISTINCT[0]] * 50  # the same pair again and again: only the first is accepted
    records, stats, script, _ = _grow(replies, n=5, max_attempts=7)
    assert len(records) == 1
    assert stats == {"attempts": 7, "accepted": 1, "rejected_unparsable": 0, "rejected_similar": 6}
    assert len(script.prompts) == 7


def test_stops_once_n_are_accepted():
    records, stats, script, _ = _grow(DISTINCT, n=3)
    assert len(records) == 3 and stats["attempts"] == 3 and len(script.prompts) == 3


def test_warmup_prompts_first_then_unlike_prompts_quoting_accepted_pairs():
    records, _, script, _ = _grow(DISTINCT, n=6, warmup=2)
    warm = warmup_prompt("math", "word problems")
    assert script.prompts[:2] == [warm, warm]
    accepted_texts = [render_text(r["instruction"], r["input"], r["output"]) for r in records]
    for k, prompt in enumerate(script.prompts[2:], start=2):
        assert prompt != warm
        quoted = [t for t in accepted_texts[:k] if t in prompt]
        assert len(quoted) == min(3, k)  # sampled from the pairs accepted before this attempt only
        assert not any(t in prompt for t in accepted_texts[k:])


def test_warmup_prompt_while_nothing_is_accepted():
    replies = ["garbage"] * 4 + DISTINCT
    _, stats, script, _ = _grow(replies, n=2, warmup=1)
    warm = warmup_prompt("math", "word problems")
    assert script.prompts[:5] == [warm] * 5  # unparsable replies: still nothing to quote
    assert script.prompts[5] != warm
    assert stats["accepted"] == 2


def test_unlike_examples_are_sampled_with_the_rng():
    def quoted(seed):
        _, _, script, _ = _grow(DISTINCT, n=6, warmup=1, seed=seed)
        return script.prompts[-1]

    assert quoted(3) == quoted(3)
    assert len({quoted(s) for s in range(8)}) > 1


# --- through Ray, on the tiny random model ----------------------------------------------------

def test_synthesize_seeds_on_a_random_model_names_the_empty_domain(ray_session, tiny_model_dir):
    domains = {"arithmetic": "word problems about prices", "factual": "questions about capitals"}
    with pytest.raises(UserError) as err:
        synthesize_seeds(str(tiny_model_dir), domains, n_per_domain=2, max_attempts=3, max_new_tokens=16)
    message = str(err.value)
    assert "'arithmetic'" in message or "'factual'" in message
    assert "3 attempts" in message
    assert "daar.synth_max_attempts" in message and "daar.seed_source=file" in message

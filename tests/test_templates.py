"""Answer spans of `render` / `render_plain`, checked by decoding tokens against hand-written renderings.

Three tokenizers: the tiny ChatML one, the tiny one without a chat template (raysel's default
template), and the real SmolLM2-135M-Instruct tokenizer (converted demo folder, tokenizer only).
"""

import copy
from dataclasses import dataclass

import pytest

from raysel.templates import render, render_plain

LONG = 4096


@dataclass(frozen=True)
class Style:
    """What a chat template writes, in plain Python: the oracle for the rendered text."""

    kind: str  # "chatml" or "default"
    eot: str  # the end-of-turn text after an answer
    after: str  # what the template writes after the end-of-turn
    system: str = ""  # ChatML's default system prompt
    bos: str = ""  # what raysel's default template writes first: the BOS token, where there is one

    def prefix(self, prompt: list[dict]) -> str:
        """The rendered text before the last answer."""
        if self.kind == "chatml":
            head = "" if prompt and prompt[0]["role"] == "system" else f"<|im_start|>system\n{self.system}<|im_end|>\n"
            return head + "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in prompt) + \
                "<|im_start|>assistant\n"
        parts = {"system": "{}\n\n", "user": "### Instruction:\n{}\n\n", "assistant": "### Response:\n{}" + self.eot + "\n\n"}
        return self.bos + "".join(parts[m["role"]].format(m["content"]) for m in prompt) + "### Response:\n"


STYLES = {
    "tiny_chat": Style("chatml", "<|im_end|>", "\n", system="You are helpful."),
    "tiny_plain": Style("default", "<|endoftext|>", "\n\n", bos="<|endoftext|>"),
    "smollm2": Style("chatml", "<|im_end|>", "\n",
                     system="You are a helpful AI assistant named SmolLM, trained by Hugging Face"),
}


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from transformers import AutoTokenizer

    from raysel.demo.model import ensure_demo_model

    return AutoTokenizer.from_pretrained(ensure_demo_model())


@pytest.fixture(params=list(STYLES))
def case(request):
    """(tokenizer, style) for each tokenizer; plain transformers loading, so tiny_plain has no template."""
    from transformers import AutoTokenizer

    if request.param == "smollm2":
        tokenizer = request.getfixturevalue("smollm2_tokenizer")
    else:
        folder = request.getfixturevalue("tiny_model_dir" if request.param == "tiny_chat" else "tiny_model_dir_plain")
        tokenizer = AutoTokenizer.from_pretrained(folder)
    return tokenizer, STYLES[request.param], request.param


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def decode(tokenizer, ids) -> str:
    return tokenizer.decode(ids)


def assert_exact_render(tokenizer, style, prompt, response, straddle: int = 0):
    """Prompt part, answer span (end-of-turn included) and tail decode to what the template wrote.

    `straddle`: characters of the prompt that share the answer's first token (that token counts
    as answer: the span is every token overlapping the answer's characters).
    """
    r = render(tokenizer, prompt, response, LONG)
    prefix = style.prefix(prompt)
    full = prefix + response + style.eot + style.after
    cut = len(prefix) - straddle
    assert r.input_ids == tokenizer(full, add_special_tokens=False)["input_ids"]
    assert decode(tokenizer, r.input_ids[:r.answer_start]) == prefix[:cut]
    assert decode(tokenizer, r.input_ids[r.answer_start:r.answer_end]) == prefix[cut:] + response + style.eot
    assert decode(tokenizer, r.input_ids[r.answer_end:]) == style.after
    assert r.n_answer == r.answer_end - r.answer_start > 0
    return r


def test_single_turn(case):
    tokenizer, style, _ = case
    assert_exact_render(tokenizer, style, [user("What is the capital of France?")], "Paris.")


def test_system_prompt(case):
    tokenizer, style, _ = case
    prompt = [{"role": "system", "content": "Answer in one word."}, user("Capital of France?")]
    assert_exact_render(tokenizer, style, prompt, "Paris")


def test_multi_turn_only_last_answer_is_the_span(case):
    tokenizer, style, _ = case
    # The earlier answer is the same text: a string search would find it first.
    prompt = [user("Say 42."), assistant("42"), user("Again?")]
    r = assert_exact_render(tokenizer, style, prompt, "42")
    assert decode(tokenizer, r.input_ids[:r.answer_start]).count("42") == 2  # "Say 42." and the first answer


def test_prior_text_has_no_prompt(case):
    tokenizer, style, _ = case
    r = assert_exact_render(tokenizer, style, [], "The answer is 42.")
    assert "Instruction" not in decode(tokenizer, r.input_ids) and "user" not in decode(tokenizer, r.input_ids)


def test_trailing_whitespace_is_answer_but_not_after_end_of_turn(case):
    tokenizer, style, _ = case
    assert_exact_render(tokenizer, style, [user("Capital?")], "Paris. \n")
    assert_exact_render(tokenizer, style, [user("Code?")], "def f():\n    return 1\n\n")


# SmolLM2's BPE merges "\n " into one token: the template's newline joins the answer's first token.
LEADING_STRADDLE = {"tiny_chat": 0, "tiny_plain": 0, "smollm2": 1}


def test_leading_whitespace(case):
    tokenizer, style, name = case
    assert_exact_render(tokenizer, style, [user("Capital?")], "  Paris. \n", straddle=LEADING_STRADDLE[name])


def test_empty_answer_is_just_the_end_of_turn(case):
    tokenizer, style, _ = case
    r = assert_exact_render(tokenizer, style, [user("Nothing?")], "")
    assert r.n_answer == 1


# --- truncation ----------------------------------------------------------------------------

PROMPT = [user("What is 40 plus 2? Explain.")]
ANSWER = "The answer is 42, because 40 + 2 = 42."


def test_max_length_cuts_the_answer(case):
    tokenizer, _, _ = case
    full = render(tokenizer, PROMPT, ANSWER, LONG)
    for keep in (1, 2, full.n_answer - 1):
        limit = full.answer_start + keep
        r = render(tokenizer, PROMPT, ANSWER, limit)
        assert r.input_ids == full.input_ids[:limit]
        assert (r.answer_start, r.answer_end) == (full.answer_start, limit)
        assert ANSWER.startswith(decode(tokenizer, r.input_ids[r.answer_start:r.answer_end]))
    # Cut just before the end-of-turn token: the span is exactly the answer text.
    r = render(tokenizer, PROMPT, ANSWER, full.answer_end - 1)
    assert decode(tokenizer, r.input_ids[r.answer_start:r.answer_end]) == ANSWER
    # Cut right after it: nothing of the answer lost, only the template's tail.
    r = render(tokenizer, PROMPT, ANSWER, full.answer_end)
    assert (r.answer_start, r.answer_end, len(r.input_ids)) == (full.answer_start, full.answer_end, full.answer_end)


def test_prompt_longer_than_max_length_gives_empty_span(case):
    tokenizer, _, _ = case
    full = render(tokenizer, PROMPT, ANSWER, LONG)
    for limit in (full.answer_start - 3, full.answer_start):
        r = render(tokenizer, PROMPT, ANSWER, limit)
        assert r.input_ids == full.input_ids[:limit]
        assert (r.answer_start, r.answer_end, r.n_answer) == (limit, limit, 0)


def test_template_that_depends_on_the_answer_is_refused(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = ("{{ messages[-1]['content'] | length }}:"
                               "{% for m in messages %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(ValueError, match="renders the prompt differently"):
        render(tokenizer, [user("Hi")], "Hello", LONG)


# --- render_plain --------------------------------------------------------------------------

def test_render_plain_is_bos_then_the_whole_answer(case):
    tokenizer, _, _ = case
    for response in (ANSWER, "  Paris. \n", "def f():\n    return 1\n"):
        r = render_plain(tokenizer, response, LONG)
        assert r.input_ids == [tokenizer.bos_token_id, *tokenizer(response, add_special_tokens=False)["input_ids"]]
        assert (r.answer_start, r.answer_end) == (1, len(r.input_ids))
        assert decode(tokenizer, r.input_ids[r.answer_start:]) == response


def test_render_plain_truncation_and_empty(case):
    tokenizer, _, _ = case
    r = render_plain(tokenizer, ANSWER, 3)
    assert (len(r.input_ids), r.answer_start, r.answer_end) == (3, 1, 3)
    assert ANSWER.startswith(decode(tokenizer, r.input_ids[1:3]))
    assert render_plain(tokenizer, "", LONG).n_answer == 0


def test_render_plain_without_bos_starts_from_eos_and_keeps_every_answer_token(tiny_model_dir):
    """Qwen2-style tokenizers have no BOS: the prior starts from EOS, so its first answer token is
    scored too (it used to be dropped, and l_cond and l_prior averaged different tokens)."""
    from transformers import AutoTokenizer

    tokenizer = copy.deepcopy(AutoTokenizer.from_pretrained(tiny_model_dir))
    tokenizer.bos_token = None
    r = render_plain(tokenizer, ANSWER, LONG)
    answer_ids = tokenizer(ANSWER, add_special_tokens=False)["input_ids"]
    assert r.input_ids == [tokenizer.eos_token_id, *answer_ids]
    assert (r.answer_start, r.answer_end) == (1, len(answer_ids) + 1)
    assert decode(tokenizer, r.input_ids[r.answer_start:]) == ANSWER
    one_token = tokenizer.decode(answer_ids[:1])
    assert render_plain(tokenizer, one_token, LONG).n_answer == 1


def test_default_template_starts_with_bos_in_scoring_and_training(tiny_model_dir_plain):
    """Models without a chat template (base Llama-family models) are scored and trained after BOS."""
    from transformers import AutoTokenizer

    from raysel.scoring.batch import encode_sample

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir_plain)
    assert not tokenizer.chat_template and tokenizer.bos_token_id is not None
    e = encode_sample(tokenizer, [user("Capital?")], "Paris.", LONG)
    assert e.cond_ids[0] == tokenizer.bos_token_id and e.prior_ids[0] == tokenizer.bos_token_id
    assert render(tokenizer, [user("Capital?")], "Paris.", LONG).input_ids[0] == tokenizer.bos_token_id  # training
    tokenizer.bos_token = None
    assert tokenizer.decode(render(tokenizer, [user("Capital?")], "Paris.", LONG).input_ids).startswith("### ")

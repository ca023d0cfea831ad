"""IFD scoring throughput: raysel's batched scorer against the reference way, on the demo model.

    python benchmarks/scoring.py                 # 300 demo-pool samples, auto device and dtype
    python benchmarks/scoring.py --n 100 --dtype float32

In one run, on the same samples and the same tokens:
- raysel: `BatchScorer` (length-sorted micro-batches, the shared template prefix run once,
  LM head on answer positions only, a vocabulary slice at a time), tokenisation included;
- reference: one sample at a time, two forward passes with full logits and transformers' own
  loss (the way the reference IFD code does it), on pre-tokenised ids, in the same dtype;
- the two take turns on groups of samples, so that other jobs on a shared machine slow both alike;
- the machine's matmul limit: a torch matmul of the shape of the model's MLP projection at the
  micro-batch size, same dtype and threads, probed for 0.3 s before and after every turn. On a
  shared VM that rate swings about 3x within seconds, so each turn is held against the probes
  beside it (`fraction_of_matmul_limit`); the best probe of the run is reported too
  (`fraction_of_best_probe`, the strictest reading);
- where raysel scores in bf16, the bf16-versus-fp32 IFD drift (and speed) on a subset; always
  fp32 raysel against the fp32 reference (the batched method itself is exact: the differences
  are rounding only), and the same with the tokenizer's BOS removed and prior_context=plain,
  against a reference that encodes the plain prior itself (EOS + the answer's tokens).
Tokens per second count the tokens of the conditioned and prior texts as scored, the same for
both. FLOPs count the work actually done: 2 x non-embedding parameters x tokens computed (raysel
computes a shared prefix once, not per text), plus 2 x hidden x vocabulary per LM-head position
(attention score work is not counted). The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--n", type=int, default=300, help="demo-pool samples to score")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    # One thread: what each scorer actor runs with on a small CPU box (raysel/scoring/stage.py
    # says why); the reference loop gets the same. Use --threads 2 to see a two-thread actor.
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tokens-per-forward", type=int, default=0, help="0: raysel's default for the device")
    p.add_argument("--vocab-chunk", type=int, default=None,
                   help="vocabulary ids per LM-head slice (default: raysel's for the device; 0: the whole vocabulary)")
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--group", type=int, default=60, help="samples per turn of raysel and the reference")
    p.add_argument("--probe-seconds", type=float, default=0.3, help="matmul probe before and after every turn")
    p.add_argument("--pipeline", type=int, default=0,
                   help="also run the Ray Data stage (score_pool, auto actor plan) on this many demo rows")
    p.add_argument("--no-share-prefix", action="store_true", help="raysel computes every text in full")
    p.add_argument("--drift-samples", type=int, default=64,
                   help="samples scored in fp32 against the reference, and in bf16 against fp32 where raysel scores in bf16 (0: skip)")
    return p.parse_args()


def demo_samples(n: int) -> list[tuple[list[dict], str]]:
    """The first n valid rows of the demo pool: arithmetic, code, facts, reasoning of mixed lengths."""
    from raysel.config import PoolConfig
    from raysel.demo.pool import ensure_demo_pool
    from raysel.pool import normalise

    out = []
    with open(ensure_demo_pool()) as f:
        for line in f:
            row = normalise(json.loads(line), PoolConfig())
            if "reason" not in row:
                out.append((row["prompt"], row["response"]))
            if len(out) == n:
                break
    return out


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def matmul_rate(m: int, k: int, n: int, dtype, device: str, seconds: float = 0.3) -> float:
    """FLOP/s of a [m, k] x [k, n] matmul over about `seconds` (mean, after a warm-up)."""
    import torch

    a = torch.randn(m, k, dtype=dtype, device=device)
    b = torch.randn(k, n, dtype=dtype, device=device)
    for _ in range(2):
        a @ b
    sync(device)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        runs += 1
    sync(device)
    return 2 * m * k * n * runs / (time.perf_counter() - start)


def non_embedding_params(model) -> int:
    skip = {id(p) for p in model.get_input_embeddings().parameters()}
    skip |= {id(p) for p in model.get_output_embeddings().parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def make_scorer(model, tokenizer, args, device: str):
    from raysel.scoring.batch import BatchScorer
    from raysel.scoring.stage import VOCAB_CHUNK, default_tokens_per_forward

    budget = args.tokens_per_forward or default_tokens_per_forward(device, model.dtype)
    vocab_chunk = VOCAB_CHUNK[device] if args.vocab_chunk is None else args.vocab_chunk
    return BatchScorer(model, tokenizer, max_length=args.max_length, token_budget=budget,
                       vocab_chunk=vocab_chunk, share_prefix=not args.no_share_prefix)


def score_raysel(scorer, samples, device: str):
    """IFDs of the scored samples and the seconds taken (tokenisation included)."""
    sync(device)
    t = time.perf_counter()
    results = scorer.score(samples)
    sync(device)
    return [r.ifd for r in results if r.status == "scored"], time.perf_counter() - t


def reference_loss(model, ids: list[int], start: int, n: int, device: str) -> float:
    """Mean NLL of ids[start:start+n]: one full forward with [1, seq, vocab] logits and HF's own loss."""
    import torch

    x = torch.tensor([ids], device=device)
    labels = torch.full_like(x, -100)
    labels[0, start: start + n] = x[0, start: start + n]
    return model(input_ids=x, labels=labels).loss.item()


def score_reference(model, encoded, device: str):
    """One sample at a time; each text a full forward with [1, seq, vocab] logits and HF's loss."""
    import torch

    ifds = []
    with torch.inference_mode():
        sync(device)
        t = time.perf_counter()
        for e in encoded:
            l_cond = reference_loss(model, e.cond_ids, e.cond_start, e.n_answer, device)
            l_prior = reference_loss(model, e.prior_ids, e.prior_start, e.n_answer, device)
            ifds.append(math.exp(l_cond - l_prior))
        sync(device)
    return ifds, time.perf_counter() - t


def compare(model, tokenizer, samples, encoded, args, device: str, probe, flops_of) -> dict:
    """raysel and the reference on the same groups of samples, taking turns (which goes first
    alternates), so that a machine shared with other jobs slows both alike.

    A short matmul probe runs before and after every turn; a turn's limit is the mean of the two.
    The matmul rate of a shared 2-core VM swings 2-3x from one second to the next (bf16 on an AMX
    Xeon: about 400 to 1200 GFLOP/s; fp32 on an AVX2 EPYC: 49 to 75), so the fraction is the FLOPs done over the FLOPs the probes' rate would
    have done in the same seconds. The best probe is reported too, for the strictest reading."""
    scorer = make_scorer(model, tokenizer, args, device)
    scorer.score(samples[:4])  # warm-up: first-call allocations and kernel selection
    score_reference(model, encoded[:1], device)
    scorer.stats = dict.fromkeys(scorer.stats, 0)
    turns = {"raysel": [], "reference": []}  # (seconds, flops, limit) per turn
    ours, ref, probes = [], [], [probe()]
    for g, lo in enumerate(range(0, len(samples), args.group)):
        group, group_enc = samples[lo: lo + args.group], encoded[lo: lo + args.group]
        for name in ("raysel", "reference") if g % 2 == 0 else ("reference", "raysel"):
            if name == "raysel":
                before = dict(scorer.stats)
                ifds, secs = score_raysel(scorer, group, device)
                ours += ifds
                flops = flops_of({k: v - before[k] for k, v in scorer.stats.items()})
            else:
                ifds, secs = score_reference(model, group_enc, device)
                ref += ifds
                flops = flops_of({"forward_tokens": sum(len(e.cond_ids) + len(e.prior_ids) for e in group_enc)},
                                 full_logits=True)
            probes.append(probe())
            turns[name].append((secs, flops, (probes[-2] + probes[-1]) / 2))
        print(f"  group {g}: {len(ours)} samples, raysel {sum(t[0] for t in turns['raysel']):.1f}s, reference "
              f"{sum(t[0] for t in turns['reference']):.1f}s, matmul probe {probes[-1] / 1e9:.0f} GFLOP/s", flush=True)
    diffs = [abs(a - b) for a, b in zip(ours, ref, strict=True)]
    out = {"ifds": ours, "stats": scorer.stats, "budget": scorer.token_budget, "vocab_chunk": scorer.vocab_chunk,
           "limit_best": max(probes), "limit_lowest": min(probes), "probes": len(probes),
           "max_abs_ifd_diff": max(diffs), "max_rel_ifd_diff": max(d / b for d, b in zip(diffs, ref, strict=True))}
    # Each group's own ratio shows how far the machine's swings move the overall one.
    out["group_speedups"] = sorted(r[0] / o[0] for o, r in zip(turns["raysel"], turns["reference"], strict=True))
    for name, rows in turns.items():
        seconds, flops = sum(t[0] for t in rows), sum(t[1] for t in rows)
        possible = sum(t[0] * t[2] for t in rows)  # FLOPs at the probes' rate over the same seconds
        out[name] = {"seconds": seconds, "flops": flops, "matched_limit": possible / seconds,
                     "fraction": flops / possible}
    return out


def no_bos_plain(args, samples, device: str) -> dict:
    """fp32 raysel with prior_context=plain and the tokenizer's BOS removed (as Qwen2's has none)
    against a reference that encodes independently: the prior is EOS + the answer's own tokens,
    with the same n leading answer tokens scored in both texts."""
    import copy

    import torch

    from raysel.models import load_model, load_tokenizer
    from raysel.templates import render

    tokenizer = copy.deepcopy(load_tokenizer(args.model))
    tokenizer.bos_token = None
    model = load_model(args.model, dtype=torch.float32).to(device)
    scorer = make_scorer(model, tokenizer, args, device)
    scorer.prior_context = "plain"
    results = scorer.score(samples)

    diffs = []
    with torch.inference_mode():
        for (prompt, response), got in zip(samples, results, strict=True):
            cond = render(tokenizer, prompt, response, args.max_length)
            answer = tokenizer(response, add_special_tokens=False)["input_ids"]
            n = min(cond.n_answer, len(answer), args.max_length - 1)
            if n == 0:
                continue
            ifd = math.exp(reference_loss(model, cond.input_ids, cond.answer_start, n, device) -
                           reference_loss(model, [tokenizer.eos_token_id, *answer[:n]], 1, n, device))
            diffs.append(abs(got.ifd - ifd) if got.status == "scored" else math.inf)
    return {"no_bos_plain_samples": len(diffs), "no_bos_plain_fp32_max_abs_ifd_diff_vs_reference": max(diffs)}


def drift(args, samples, device: str, dtype) -> dict:
    """fp32 raysel against the fp32 reference (which shows the batched method itself is exact),
    and, where raysel scores in bf16, bf16 against fp32 raysel on the same samples (IFD and speed)."""
    import torch

    from raysel.models import load_model, load_tokenizer
    from raysel.scoring.batch import encode_sample

    tokenizer = load_tokenizer(args.model)
    encoded = [encode_sample(tokenizer, p, r, args.max_length) for p, r in samples]
    dtypes = {"fp32": torch.float32}
    if dtype == torch.bfloat16:
        dtypes["bf16"] = torch.bfloat16
    encoded = [e for e in encoded if e.reason is None]
    tokens = sum(len(e.cond_ids) + len(e.prior_ids) for e in encoded)
    out, ifds = {"drift_samples": len(encoded)}, {}
    for name, dt in dtypes.items():
        model = load_model(args.model, dtype=dt).to(device)
        scorer = make_scorer(model, tokenizer, args, device)
        scorer.score(samples[:4])
        ifds[name], seconds = score_raysel(scorer, samples, device)
        out[f"{name}_tokens_per_s"] = round(tokens / seconds, 1)
        if name == "fp32":
            ref, _ = score_reference(model, encoded, device)
            out["fp32_max_abs_ifd_diff_vs_reference"] = max(abs(a - b) for a, b in zip(ifds[name], ref, strict=True))
            out["fp32_ifd_std"] = _std(ifds[name])
        del model
    out.update(no_bos_plain(args, samples, device))
    if "bf16" in ifds:
        diffs = [abs(a - b) for a, b in zip(ifds["fp32"], ifds["bf16"], strict=True)]
        rel = [abs(a - b) / a for a, b in zip(ifds["fp32"], ifds["bf16"], strict=True)]
        out.update(bf16_vs_fp32_max_abs_ifd_diff=max(diffs), bf16_vs_fp32_mean_abs_ifd_diff=sum(diffs) / len(diffs),
                   bf16_vs_fp32_max_rel_ifd_diff=max(rel), bf16_vs_fp32_spearman=spearman(ifds["fp32"], ifds["bf16"]),
                   bf16_vs_fp32_speedup=out["bf16_tokens_per_s"] / out["fp32_tokens_per_s"])
    return out


def pipeline(args) -> dict:
    """The whole stage on a local Ray cluster: ingest demo rows, score_pool with the auto plan.
    Its time includes starting the actors and loading the model in each."""
    import tempfile
    from pathlib import Path

    import ray

    from raysel.config import Config, ModelConfig, PoolConfig
    from raysel.demo.pool import ensure_demo_pool
    from raysel.models import load_tokenizer
    from raysel.pool import ingest, read_rows
    from raysel.scoring import score_pool
    from raysel.scoring.batch import encode_sample

    ray.init(include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}})
    try:
        with tempfile.TemporaryDirectory() as tmp:
            rows_path = Path(tmp) / "rows.parquet"
            ingest(PoolConfig(path=str(ensure_demo_pool()), limit=args.pipeline), rows_path)
            cfg = Config(model=ModelConfig(path=args.model, max_length=args.max_length))
            t = time.perf_counter()
            summary = score_pool(rows_path, Path(tmp) / "round-0", args.model, cfg)
            seconds = time.perf_counter() - t
            rows = read_rows(rows_path, ["status", "prompt", "response"], valid_only=True).to_pylist()
        tokenizer = load_tokenizer(args.model)
        encoded = [encode_sample(tokenizer, r["prompt"], r["response"], args.max_length) for r in rows]
        tokens = sum(len(e.cond_ids) + len(e.prior_ids) for e in encoded if e.reason is None)
    finally:
        ray.shutdown()
    return {"pipeline_seconds": round(seconds, 2), "pipeline_rows_scored": summary["scored"],
            "pipeline_tokens_per_s": round(tokens / seconds, 1), "pipeline_actors": summary["actors"],
            "pipeline_actors_used": summary["actors_used"], "pipeline_threads_per_actor": summary["threads_per_actor"]}


def spearman(a: list[float], b: list[float]) -> float:
    import numpy as np

    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def _std(x: list[float]) -> float:
    mean = sum(x) / len(x)
    return math.sqrt(sum((v - mean) ** 2 for v in x) / len(x))


def main() -> None:
    import torch

    from raysel.models import load_model, load_tokenizer
    from raysel.scoring.batch import encode_sample
    from raysel.scoring.stage import resolve_dtype

    args = parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(args.threads)
    dtype = resolve_dtype(args.dtype, device)
    figures = {"device": torch.cuda.get_device_name() if device == "cuda" else f"cpu ({platform.processor() or 'x86_64'}"
               f", {args.threads} threads)", "dtype": str(dtype).removeprefix("torch."), "model": args.model}
    print(f"device {figures['device']}, dtype {figures['dtype']}", flush=True)

    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model, dtype=dtype).to(device)
    samples = demo_samples(args.n)
    encoded = [encode_sample(tokenizer, p, r, args.max_length) for p, r in samples]
    encoded = [e for e in encoded if e.reason is None]
    tokens = sum(len(e.cond_ids) + len(e.prior_ids) for e in encoded)
    answer = sum(2 * e.n_answer for e in encoded)
    cfg = model.config
    params = non_embedding_params(model)
    figures.update(samples=len(encoded), tokens=tokens, answer_positions=answer, non_embedding_params=params)
    print(f"{len(encoded)} samples, {tokens} tokens ({tokens / len(encoded):.0f} per sample, cond + prior), "
          f"{params / 1e6:.1f}M non-embedding parameters", flush=True)

    from raysel.scoring.stage import default_tokens_per_forward

    rows = args.tokens_per_forward or default_tokens_per_forward(device, dtype)
    head_flops = 2 * cfg.hidden_size * cfg.vocab_size

    def flops_of(stats: dict, full_logits: bool = False) -> float:
        positions = stats["forward_tokens"] if full_logits else stats["lm_head_positions"]
        return 2 * params * stats["forward_tokens"] + head_flops * positions

    def probe() -> float:  # the model's widest projection at raysel's micro-batch size
        return matmul_rate(rows, cfg.hidden_size, cfg.intermediate_size, dtype, device, args.probe_seconds)

    r = compare(model, tokenizer, samples, encoded, args, device, probe, flops_of)
    ours, theirs, stats = r["raysel"], r["reference"], r["stats"]
    seconds, ref_seconds = ours["seconds"], theirs["seconds"]
    figures.update(
        tokens_per_s=round(tokens / seconds, 1), seconds=round(seconds, 2),
        computed_tokens_per_s=round(stats["forward_tokens"] / seconds, 1),
        shared_prefix_fraction=stats["prefix_tokens"] / tokens,
        reference_tokens_per_s=round(tokens / ref_seconds, 1), reference_seconds=round(ref_seconds, 2),
        speedup_vs_reference=ref_seconds / seconds, tokens_per_forward=r["budget"], vocab_chunk=r["vocab_chunk"],
        speedup_group_min=r["group_speedups"][0], speedup_group_max=r["group_speedups"][-1],
        speedup_group_median=statistics.median(r["group_speedups"]),
        padding_fraction=1 - stats["forward_tokens"] / stats["padded_tokens"],
        achieved_flops=ours["flops"] / seconds, reference_achieved_flops=theirs["flops"] / ref_seconds,
        matmul_limit_flops=ours["matched_limit"], reference_matmul_limit_flops=theirs["matched_limit"],
        matmul_best_probe_flops=r["limit_best"], matmul_lowest_probe_flops=r["limit_lowest"], matmul_probes=r["probes"],
        fraction_of_matmul_limit=ours["fraction"], reference_fraction_of_matmul_limit=theirs["fraction"],
        fraction_of_best_probe=ours["flops"] / seconds / r["limit_best"],
        max_abs_ifd_diff_vs_reference=r["max_abs_ifd_diff"], max_rel_ifd_diff_vs_reference=r["max_rel_ifd_diff"],
        ifd_std=_std(r["ifds"]),
    )
    print(f"raysel:    {figures['tokens_per_s']:8.1f} tokens/s ({seconds:.1f}s, {figures['shared_prefix_fraction']:.1%} "
          f"of the tokens from shared prefixes, {figures['padding_fraction']:.1%} padding), "
          f"{figures['achieved_flops'] / 1e9:.1f} GFLOP/s", flush=True)
    print(f"reference: {figures['reference_tokens_per_s']:8.1f} tokens/s ({ref_seconds:.1f}s), "
          f"{figures['reference_achieved_flops'] / 1e9:.1f} GFLOP/s", flush=True)
    print(f"speedup {figures['speedup_vs_reference']:.2f}x (groups {figures['speedup_group_min']:.2f}-"
          f"{figures['speedup_group_max']:.2f}x, median {figures['speedup_group_median']:.2f}x); matmul limit over raysel's turns "
          f"{ours['matched_limit'] / 1e9:.0f} GFLOP/s (probes {r['limit_lowest'] / 1e9:.0f}-{r['limit_best'] / 1e9:.0f}):"
          f" raysel reaches {ours['fraction']:.0%} ({figures['fraction_of_best_probe']:.0%} of the best probe), "
          f"the reference {theirs['fraction']:.0%}; max |IFD diff| vs reference {r['max_abs_ifd_diff']:.2e} "
          f"(relative {r['max_rel_ifd_diff']:.2e}, IFD std {figures['ifd_std']:.3f})", flush=True)

    del model
    if args.drift_samples:
        figures.update(drift(args, samples[: args.drift_samples], device, dtype))
        if "bf16_vs_fp32_speedup" in figures:
            print(f"bf16 vs fp32 on {figures['drift_samples']} samples: max |IFD diff| "
                  f"{figures['bf16_vs_fp32_max_abs_ifd_diff']:.4f}, mean {figures['bf16_vs_fp32_mean_abs_ifd_diff']:.4f}"
                  f" (IFD std {figures['fp32_ifd_std']:.3f}), rank correlation {figures['bf16_vs_fp32_spearman']:.4f}, "
                  f"bf16 {figures['bf16_vs_fp32_speedup']:.2f}x fp32", flush=True)
        else:
            print("bf16 vs fp32: skipped, raysel scores in fp32 here", flush=True)
        print(f"fp32 raysel vs fp32 reference on {figures['drift_samples']} samples: max |IFD diff| "
              f"{figures['fp32_max_abs_ifd_diff_vs_reference']:.1e}; without BOS, prior_context=plain: "
              f"{figures['no_bos_plain_fp32_max_abs_ifd_diff_vs_reference']:.1e}", flush=True)
    if args.pipeline:
        figures.update(pipeline(args))
        print(f"pipeline: {figures['pipeline_rows_scored']} rows in {figures['pipeline_seconds']:.1f}s "
              f"({figures['pipeline_tokens_per_s']:.0f} tokens/s with start-up) on {figures['pipeline_actors']} "
              f"actor(s) x {figures['pipeline_threads_per_actor']} thread(s)", flush=True)
    print(json.dumps({k: (float(f"{v:.6g}") if isinstance(v, float) else v) for k, v in figures.items()}))


if __name__ == "__main__":
    main()

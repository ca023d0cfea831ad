"""IFD scoring throughput: raysel's batched scorer against the reference way, on the demo model.

    python benchmarks/scoring.py                 # 300 demo-pool samples, auto device and dtype
    python benchmarks/scoring.py --n 100 --dtype float32

In one run, on the same samples and the same tokens:
- raysel: `BatchScorer` (length-sorted micro-batches, LM head on answer positions only),
  tokenisation included;
- reference: one sample at a time, two forward passes with full logits and transformers' own
  loss (the way the reference IFD code does it), on pre-tokenised ids, in the same dtype;
- the two take turns on groups of samples, so that other jobs on a shared machine slow both alike;
- the machine's matmul limit: a torch matmul of the shape of the model's MLP projection at the
  micro-batch size, same dtype and threads, best of about a second, measured between groups;
  the highest is used, so a busy machine cannot flatter the fraction;
- the bf16-versus-fp32 IFD drift (and speed) on a subset, and fp32 raysel against the fp32
  reference (the batched method itself is exact: the differences are rounding only).
Tokens are those of the conditioned and prior texts as scored. FLOPs: 2 x non-embedding
parameters x tokens, plus 2 x hidden x vocabulary per LM-head position actually computed
(attention score work is not counted). The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
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
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--group", type=int, default=100, help="samples per turn of raysel and the reference")
    p.add_argument("--pipeline", type=int, default=0,
                   help="also run the Ray Data stage (score_pool, auto actor plan) on this many demo rows")
    p.add_argument("--drift-samples", type=int, default=64, help="samples scored in fp32 and bf16 (0: skip)")
    return p.parse_args()


def demo_samples(n: int) -> list[tuple[list[dict], str]]:
    """The first n valid rows of the demo pool: arithmetic, code, facts, reasoning of mixed lengths."""
    from raysel.config import PoolConfig
    from raysel.demo_pool import ensure_demo_pool
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


def matmul_rate(m: int, k: int, n: int, dtype, device: str, seconds: float = 2.0) -> float:
    """FLOP/s of a [m, k] x [k, n] matmul, best of repeated runs for about `seconds`."""
    import torch

    a = torch.randn(m, k, dtype=dtype, device=device)
    b = torch.randn(k, n, dtype=dtype, device=device)
    for _ in range(3):
        a @ b
    sync(device)
    best, start = math.inf, time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * m * k * n / best


def non_embedding_params(model) -> int:
    skip = {id(p) for p in model.get_input_embeddings().parameters()}
    skip |= {id(p) for p in model.get_output_embeddings().parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def make_scorer(model, tokenizer, args, device: str):
    from raysel.scoring.batch import BatchScorer
    from raysel.scoring.stage import CPU_TOKENS_PER_FORWARD, GPU_TOKENS_PER_FORWARD

    budget = args.tokens_per_forward or (GPU_TOKENS_PER_FORWARD if device == "cuda" else CPU_TOKENS_PER_FORWARD)
    return BatchScorer(model, tokenizer, max_length=args.max_length, token_budget=budget)


def score_raysel(scorer, samples, device: str):
    """IFDs of the scored samples and the seconds taken (tokenisation included)."""
    sync(device)
    t = time.perf_counter()
    results = scorer.score(samples)
    sync(device)
    return [r.ifd for r in results if r.status == "scored"], time.perf_counter() - t


def score_reference(model, encoded, device: str):
    """One sample at a time; each text a full forward with [1, seq, vocab] logits and HF's loss."""
    import torch

    def loss(ids, start, n):
        x = torch.tensor([ids], device=device)
        labels = torch.full_like(x, -100)
        labels[0, start: start + n] = x[0, start: start + n]
        return model(input_ids=x, labels=labels).loss.item()

    ifds = []
    with torch.inference_mode():
        sync(device)
        t = time.perf_counter()
        for e in encoded:
            l_cond = loss(e.cond_ids, e.cond_start, e.n_answer)
            l_prior = loss(e.prior_ids, e.prior_start, e.n_answer)
            ifds.append(math.exp(l_cond - l_prior))
        sync(device)
    return ifds, time.perf_counter() - t


def compare(model, tokenizer, samples, encoded, args, device: str, limit_shape) -> dict:
    """raysel and the reference on the same groups of samples, taking turns (which goes first
    alternates), so that a machine shared with other jobs slows both alike; the matmul limit is
    measured between groups and the highest kept."""
    scorer = make_scorer(model, tokenizer, args, device)
    scorer.score(samples[:4])  # warm-up: first-call allocations and kernel selection
    score_reference(model, encoded[:1], device)
    scorer.stats = dict.fromkeys(scorer.stats, 0)
    ours, ref, seconds, ref_seconds, limits = [], [], 0.0, 0.0, []
    for g, lo in enumerate(range(0, len(samples), args.group)):
        group, group_enc = samples[lo: lo + args.group], encoded[lo: lo + args.group]
        limits.append(matmul_rate(*limit_shape, seconds=1.0))
        for name in ("raysel", "reference") if g % 2 == 0 else ("reference", "raysel"):
            if name == "raysel":
                ifds, secs = score_raysel(scorer, group, device)
                ours, seconds = ours + ifds, seconds + secs
            else:
                ifds, secs = score_reference(model, group_enc, device)
                ref, ref_seconds = ref + ifds, ref_seconds + secs
        print(f"  group {g}: {len(ours)} samples, raysel {seconds:.1f}s, reference {ref_seconds:.1f}s, "
              f"matmul limit {limits[-1] / 1e9:.0f} GFLOP/s", flush=True)
    limits.append(matmul_rate(*limit_shape, seconds=1.0))
    diffs = [abs(a - b) for a, b in zip(ours, ref, strict=True)]
    return {"ifds": ours, "seconds": seconds, "ref_seconds": ref_seconds, "stats": scorer.stats,
            "budget": scorer.token_budget, "limit": max(limits), "limit_min": min(limits),
            "max_abs_ifd_diff": max(diffs), "max_rel_ifd_diff": max(d / b for d, b in zip(diffs, ref, strict=True))}


def drift(args, samples, device: str) -> dict:
    """fp32 against bf16 raysel scoring of the same samples (IFD and speed), and fp32 raysel
    against the fp32 reference (which shows the batched method itself is exact)."""
    import torch

    from raysel.models import load_model, load_tokenizer
    from raysel.scoring.batch import encode_sample

    tokenizer = load_tokenizer(args.model)
    encoded = [encode_sample(tokenizer, p, r, args.max_length) for p, r in samples]
    out, ifds = {}, {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model = load_model(args.model, dtype=dtype).to(device)
        scorer = make_scorer(model, tokenizer, args, device)
        scorer.score(samples[:4])
        scorer.stats = dict.fromkeys(scorer.stats, 0)
        ifds[name], seconds = score_raysel(scorer, samples, device)
        out[f"{name}_tokens_per_s"] = round(scorer.stats["forward_tokens"] / seconds, 1)
        if name == "fp32":
            ref, _ = score_reference(model, [e for e in encoded if e.reason is None], device)
            out["fp32_max_abs_ifd_diff_vs_reference"] = max(abs(a - b) for a, b in zip(ifds[name], ref, strict=True))
        del model
    diffs = [abs(a - b) for a, b in zip(ifds["fp32"], ifds["bf16"], strict=True)]
    rel = [abs(a - b) / a for a, b in zip(ifds["fp32"], ifds["bf16"], strict=True)]
    out.update(bf16_vs_fp32_max_abs_ifd_diff=max(diffs), bf16_vs_fp32_mean_abs_ifd_diff=sum(diffs) / len(diffs),
               bf16_vs_fp32_max_rel_ifd_diff=max(rel), bf16_vs_fp32_spearman=spearman(ifds["fp32"], ifds["bf16"]),
               bf16_vs_fp32_speedup=out["bf16_tokens_per_s"] / out["fp32_tokens_per_s"],
               drift_samples=len(diffs), fp32_ifd_std=_std(ifds["fp32"]))
    return out


def pipeline(args) -> dict:
    """The whole stage on a local Ray cluster: ingest demo rows, score_pool with the auto plan.
    Its time includes starting the actors and loading the model in each."""
    import tempfile
    from pathlib import Path

    import ray

    from raysel.config import Config, ModelConfig, PoolConfig
    from raysel.demo_pool import ensure_demo_pool
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

    from raysel.scoring.stage import CPU_TOKENS_PER_FORWARD, GPU_TOKENS_PER_FORWARD

    rows = args.tokens_per_forward or (GPU_TOKENS_PER_FORWARD if device == "cuda" else CPU_TOKENS_PER_FORWARD)
    limit_shape = (rows, cfg.hidden_size, cfg.intermediate_size, dtype, device)
    r = compare(model, tokenizer, samples, encoded, args, device, limit_shape)
    stats, seconds, ref_seconds = r["stats"], r["seconds"], r["ref_seconds"]
    head_flops = 2 * cfg.hidden_size * cfg.vocab_size
    flops = 2 * params * stats["forward_tokens"] + head_flops * stats["lm_head_positions"]
    ref_flops = (2 * params + head_flops) * tokens
    figures.update(
        tokens_per_s=round(stats["forward_tokens"] / seconds, 1), seconds=round(seconds, 2),
        reference_tokens_per_s=round(tokens / ref_seconds, 1), reference_seconds=round(ref_seconds, 2),
        speedup_vs_reference=ref_seconds / seconds, tokens_per_forward=r["budget"],
        padding_fraction=1 - stats["forward_tokens"] / stats["padded_tokens"],
        achieved_flops=flops / seconds, reference_achieved_flops=ref_flops / ref_seconds,
        matmul_limit_flops=r["limit"], matmul_limit_lowest_seen=r["limit_min"],
        fraction_of_matmul_limit=flops / seconds / r["limit"],
        reference_fraction_of_matmul_limit=ref_flops / ref_seconds / r["limit"],
        max_abs_ifd_diff_vs_reference=r["max_abs_ifd_diff"], max_rel_ifd_diff_vs_reference=r["max_rel_ifd_diff"],
        ifd_std=_std(r["ifds"]),
    )
    print(f"raysel:    {figures['tokens_per_s']:8.1f} tokens/s ({seconds:.1f}s, "
          f"{figures['padding_fraction']:.1%} padding), {flops / seconds / 1e9:.1f} GFLOP/s", flush=True)
    print(f"reference: {figures['reference_tokens_per_s']:8.1f} tokens/s ({ref_seconds:.1f}s), "
          f"{ref_flops / ref_seconds / 1e9:.1f} GFLOP/s", flush=True)
    print(f"speedup {figures['speedup_vs_reference']:.2f}x; matmul limit {r['limit'] / 1e9:.0f} GFLOP/s "
          f"(lowest seen {r['limit_min'] / 1e9:.0f}), raysel reaches {figures['fraction_of_matmul_limit']:.0%}, "
          f"the reference {figures['reference_fraction_of_matmul_limit']:.0%}; max |IFD diff| vs reference "
          f"{r['max_abs_ifd_diff']:.2e} (relative {r['max_rel_ifd_diff']:.2e}, IFD std {figures['ifd_std']:.3f})",
          flush=True)

    del model
    if args.drift_samples:
        figures.update(drift(args, samples[: args.drift_samples], device))
        print(f"bf16 vs fp32 on {figures['drift_samples']} samples: max |IFD diff| "
              f"{figures['bf16_vs_fp32_max_abs_ifd_diff']:.4f}, mean {figures['bf16_vs_fp32_mean_abs_ifd_diff']:.4f}"
              f" (IFD std {figures['fp32_ifd_std']:.3f}), rank correlation {figures['bf16_vs_fp32_spearman']:.4f}, "
              f"bf16 {figures['bf16_vs_fp32_speedup']:.2f}x fp32; fp32 raysel vs fp32 reference: max |IFD diff| "
              f"{figures['fp32_max_abs_ifd_diff_vs_reference']:.1e}", flush=True)
    if args.pipeline:
        figures.update(pipeline(args))
        print(f"pipeline: {figures['pipeline_rows_scored']} rows in {figures['pipeline_seconds']:.1f}s "
              f"({figures['pipeline_tokens_per_s']:.0f} tokens/s with start-up) on {figures['pipeline_actors']} "
              f"actor(s) x {figures['pipeline_threads_per_actor']} thread(s)", flush=True)
    print(json.dumps({k: (float(f"{v:.6g}") if isinstance(v, float) else v) for k, v in figures.items()}))


if __name__ == "__main__":
    main()

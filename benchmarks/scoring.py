"""IFD scoring throughput: raysel's batched scorer against the reference way, on the demo model.

    python benchmarks/scoring.py                 # 300 demo-pool samples, auto device and dtype
    python benchmarks/scoring.py --n 100 --dtype float32

In one run, on the same samples and the same tokens:
- raysel: `BatchScorer` (length-sorted micro-batches, LM head on answer positions only),
  tokenisation included;
- reference: one sample at a time, two forward passes with full logits and transformers' own
  loss (the way the reference IFD code does it), on pre-tokenised ids;
- the machine's matmul limit: a torch matmul of the shape of the model's biggest projection at
  the micro-batch size, in the same dtype and threads, measured before and after (the higher
  is used, so a busy machine cannot flatter the fraction);
- the bf16-versus-fp32 IFD drift (and speed) on a subset.
Tokens are those of the conditioned and prior texts as scored. FLOPs: 2 x non-embedding
parameters x tokens, plus 2 x hidden x vocabulary per LM-head position actually computed
(attention score work is not counted). The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--n", type=int, default=300, help="demo-pool samples to score")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--tokens-per-forward", type=int, default=0, help="0: raysel's default for the device")
    p.add_argument("--max-length", type=int, default=1024)
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


def score_raysel(model, tokenizer, samples, args, device: str):
    from raysel.scoring.batch import BatchScorer
    from raysel.scoring.stage import CPU_TOKENS_PER_FORWARD, GPU_TOKENS_PER_FORWARD

    budget = args.tokens_per_forward or (GPU_TOKENS_PER_FORWARD if device == "cuda" else CPU_TOKENS_PER_FORWARD)
    scorer = BatchScorer(model, tokenizer, max_length=args.max_length, token_budget=budget)
    scorer.score(samples[:4])  # warm-up: first-call allocations and kernel selection
    scorer.stats = dict.fromkeys(scorer.stats, 0)
    sync(device)
    t = time.perf_counter()
    results = scorer.score(samples)
    sync(device)
    return results, time.perf_counter() - t, scorer.stats, budget


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
        loss(encoded[0].cond_ids, encoded[0].cond_start, encoded[0].n_answer)  # warm-up
        sync(device)
        t = time.perf_counter()
        for e in encoded:
            l_cond = loss(e.cond_ids, e.cond_start, e.n_answer)
            l_prior = loss(e.prior_ids, e.prior_start, e.n_answer)
            ifds.append(math.exp(l_cond - l_prior))
        sync(device)
    return ifds, time.perf_counter() - t


def drift(args, samples, device: str) -> dict:
    """IFD from fp32 and from bf16 scoring of the same samples, and their speeds."""
    import torch

    from raysel.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(args.model)
    out, ifds = {}, {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model = load_model(args.model, dtype=dtype).to(device)
        results, seconds, stats, _ = score_raysel(model, tokenizer, samples, args, device)
        ifds[name] = [r.ifd for r in results if r.status == "scored"]
        out[f"{name}_tokens_per_s"] = round(stats["forward_tokens"] / seconds, 1)
        del model
    diffs = [abs(a - b) for a, b in zip(ifds["fp32"], ifds["bf16"], strict=True)]
    rel = [abs(a - b) / a for a, b in zip(ifds["fp32"], ifds["bf16"], strict=True)]
    out.update(bf16_vs_fp32_max_abs_ifd_diff=max(diffs), bf16_vs_fp32_mean_abs_ifd_diff=sum(diffs) / len(diffs),
               bf16_vs_fp32_max_rel_ifd_diff=max(rel), bf16_vs_fp32_spearman=spearman(ifds["fp32"], ifds["bf16"]),
               bf16_vs_fp32_speedup=out["bf16_tokens_per_s"] / out["fp32_tokens_per_s"],
               drift_samples=len(diffs), fp32_ifd_std=_std(ifds["fp32"]))
    return out


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

    budget_m = args.tokens_per_forward or 8192
    limit_before = matmul_rate(min(budget_m, 8192), cfg.hidden_size, cfg.intermediate_size, dtype, device)
    print(f"matmul limit (before): {limit_before / 1e9:.1f} GFLOP/s", flush=True)

    results, seconds, stats, budget = score_raysel(model, tokenizer, samples, args, device)
    head_flops = 2 * cfg.hidden_size * cfg.vocab_size
    flops = 2 * params * stats["forward_tokens"] + head_flops * stats["lm_head_positions"]
    figures.update(tokens_per_s=round(stats["forward_tokens"] / seconds, 1), seconds=round(seconds, 2),
                   tokens_per_forward=budget, padding_fraction=1 - stats["forward_tokens"] / stats["padded_tokens"],
                   achieved_flops=flops / seconds)
    print(f"raysel:    {figures['tokens_per_s']:8.1f} tokens/s ({seconds:.1f}s, "
          f"{figures['padding_fraction']:.1%} padding), {flops / seconds / 1e9:.1f} GFLOP/s", flush=True)

    ref_ifds, ref_seconds = score_reference(model, encoded, device)
    ref_flops = (2 * params + head_flops) * tokens
    figures.update(reference_tokens_per_s=round(tokens / ref_seconds, 1), reference_seconds=round(ref_seconds, 2),
                   reference_achieved_flops=ref_flops / ref_seconds)
    print(f"reference: {figures['reference_tokens_per_s']:8.1f} tokens/s ({ref_seconds:.1f}s), "
          f"{ref_flops / ref_seconds / 1e9:.1f} GFLOP/s", flush=True)

    limit_after = matmul_rate(min(budget_m, 8192), cfg.hidden_size, cfg.intermediate_size, dtype, device)
    limit = max(limit_before, limit_after)
    ours = [r.ifd for r in results if r.status == "scored"]
    figures.update(
        speedup_vs_reference=figures["tokens_per_s"] / figures["reference_tokens_per_s"],
        matmul_limit_flops=limit, matmul_limit_before=limit_before, matmul_limit_after=limit_after,
        fraction_of_matmul_limit=figures["achieved_flops"] / limit,
        reference_fraction_of_matmul_limit=figures["reference_achieved_flops"] / limit,
        max_abs_ifd_diff_vs_reference=max(abs(a - b) for a, b in zip(ours, ref_ifds, strict=True)),
    )
    print(f"matmul limit (after): {limit_after / 1e9:.1f} GFLOP/s; raysel reaches "
          f"{figures['fraction_of_matmul_limit']:.0%} of the higher, speedup {figures['speedup_vs_reference']:.2f}x, "
          f"max |IFD diff| vs reference {figures['max_abs_ifd_diff_vs_reference']:.2e}", flush=True)

    del model
    if args.drift_samples:
        figures.update(drift(args, samples[: args.drift_samples], device))
        print(f"bf16 vs fp32 on {figures['drift_samples']} samples: max |IFD diff| "
              f"{figures['bf16_vs_fp32_max_abs_ifd_diff']:.4f}, mean {figures['bf16_vs_fp32_mean_abs_ifd_diff']:.4f}"
              f" (IFD std {figures['fp32_ifd_std']:.3f}), rank correlation {figures['bf16_vs_fp32_spearman']:.4f}, "
              f"bf16 {figures['bf16_vs_fp32_speedup']:.2f}x fp32", flush=True)
    print(json.dumps({k: (round(v, 6) if isinstance(v, float) else v) for k, v in figures.items()}))


if __name__ == "__main__":
    main()

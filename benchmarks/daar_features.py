"""What DaaR's feature pass costs against a full forward of the same texts.

    python benchmarks/daar_features.py [--rows 100] [--probe-layers 3] [--repeats 2]

DaaR's features come from the first `probe_layers` decoder layers only; the rest of the model is
dropped, not run. On the demo model (SmolLM2-135M, 30 layers) the pass should cost about
probe_layers / 30 of a full forward. Measured in one process, one thread, the same texts and
micro-batches for every variant, alternating them `repeats` times (the best time of each counts):

    full        the causal LM's forward: every layer and the LM head (what an IFD pass runs)
    all layers  ProbeEncoder with every decoder layer (no LM head)
    probe       ProbeEncoder with the first probe_layers layers (what DaaR runs)

The last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100)
    ap.add_argument("--probe-layers", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    import torch

    from raysel.config import PoolConfig
    from raysel.daar.features import ProbeEncoder, render_text
    from raysel.demo.pool import ensure_demo_pool
    from raysel.models import load_model, load_tokenizer, resolve_model_path
    from raysel.pool import instruction_and_input, normalise
    from raysel.scoring.stage import default_tokens_per_forward, resolve_dtype

    torch.set_num_threads(1)
    path = resolve_model_path("demo")
    dtype = resolve_dtype("auto", "cpu")
    tokenizer = load_tokenizer(path)
    records = [json.loads(line) for line in ensure_demo_pool().read_text().splitlines()[: args.rows]]
    texts = []
    for rec in records:
        norm = normalise(rec, PoolConfig())
        if "prompt" in norm:
            texts.append(render_text(*instruction_and_input(norm["prompt"], norm["input"]), norm["response"]))
    budget = default_tokens_per_forward("cpu", dtype)
    n_layers = load_model(path, dtype=dtype).config.num_hidden_layers
    variants = {
        "probe": ProbeEncoder(load_model(path, dtype=dtype), tokenizer, args.probe_layers, 256, budget),
        "all_layers": ProbeEncoder(load_model(path, dtype=dtype), tokenizer, n_layers, 256, budget),
    }
    full_model = load_model(path, dtype=dtype)
    tokens = sum(min(256, len(ids)) for ids in tokenizer(texts)["input_ids"])
    print(f"{len(texts)} texts, {tokens} tokens, {dtype}, one thread; {n_layers} layers, probe {args.probe_layers}",
          flush=True)

    def run_full():
        # the same micro-batches, right-padded, through the causal LM (logits included)
        enc = variants["probe"]
        ids = tokenizer(texts, truncation=True, max_length=256)["input_ids"]
        with torch.inference_mode():
            for batch in enc._micro_batches(ids):
                width = max(len(ids[i]) for i in batch)
                x = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
                mask = torch.zeros_like(x)
                for row, i in enumerate(batch):
                    x[row, : len(ids[i])], mask[row, : len(ids[i])] = torch.tensor(ids[i]), 1
                full_model(input_ids=x, attention_mask=mask, use_cache=False)

    best = {"full": float("inf"), "all_layers": float("inf"), "probe": float("inf")}
    for _ in range(args.repeats):
        for name in best:
            start = time.perf_counter()
            run_full() if name == "full" else variants[name].encode(texts)
            best[name] = min(best[name], time.perf_counter() - start)
        print({k: round(v, 2) for k, v in best.items()}, flush=True)
    ratio = best["probe"] / best["full"]
    print(f"probe pass / full forward: {ratio:.3f} (layers alone would give {args.probe_layers / n_layers:.3f}); "
          f"probe / all layers without the LM head: {best['probe'] / best['all_layers']:.3f}; "
          f"probe throughput {tokens / best['probe']:.0f} tokens/s against {tokens / best['full']:.0f}")
    print(json.dumps({"texts": len(texts), "tokens": tokens, "dtype": str(dtype), "layers": n_layers,
                      "probe_layers": args.probe_layers, "seconds": {k: round(v, 3) for k, v in best.items()},
                      "probe_over_full": round(ratio, 4),
                      "probe_over_all_layers": round(best["probe"] / best["all_layers"], 4),
                      "layer_fraction": round(args.probe_layers / n_layers, 4)}))


if __name__ == "__main__":
    main()

"""DaaR: diversity as a reward; the model's first layers and two small heads choose, the full
model is tuned on the choice (docs/methods.md, DaaR).

    python jobs/daar.py                                     # demo pool, SmolLM2-135M, LoRA (configs/daar-demo.yaml)
    python jobs/daar.py --set daar.select=per_domain        # a quota per pseudo-domain
    python jobs/daar.py --set daar.seeds_path=seeds.jsonl --set pool.path=s3://bucket/pool/
    python jobs/daar.py --run-dir runs/x --resume           # continue an interrupted run
    ray job submit --working-dir . -- python jobs/daar.py --config configs/daar-8b.yaml      # cluster.yaml's cluster
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from raysel.loops.daar import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

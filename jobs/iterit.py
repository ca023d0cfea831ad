"""IterIT: score, select, fine-tune, re-score, select again (docs/methods.md).

    python jobs/iterit.py                                   # demo pool, SmolLM2-135M, LoRA, 3 rounds
    python jobs/iterit.py --config configs/tiny.yaml --run-dir runs/tiny
    python jobs/iterit.py --set pool.path=s3://bucket/pool/ --set selection.k=20000
    python jobs/iterit.py --run-dir runs/x --resume          # continue an interrupted run
    ray job submit --working-dir . -- python jobs/iterit.py --config configs/iterit-8b.yaml  # cluster.yaml's cluster
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from raysel.loops.iterit import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

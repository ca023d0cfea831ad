"""Fine-tuning between rounds (docs/methods.md, Training): Ray Train + DeepSpeed, LoRA or full.

The driver side is `trainer.train_round`; `worker` is what each Ray Train worker runs;
`data` builds the round's tokenised rows in Ray Data; `plan` is the pure arithmetic.
"""

from raysel.training.plan import steps_per_round, total_steps
from raysel.training.trainer import resolve_use_gpu, train_round

__all__ = ["resolve_use_gpu", "steps_per_round", "total_steps", "train_round"]

"""Fine-tuning between rounds (docs/methods.md, Training): Ray Train + DeepSpeed, LoRA or full.

The driver side is `trainer.train_round`; `worker` is what each Ray Train worker runs;
`data` builds the round's tokenised rows in Ray Data; `plan` is the pure arithmetic.
"""

from raysel.training.plan import steps_per_round, total_steps
from raysel.training.trainer import export_path, resolve_use_gpu, state_path, train_round

__all__ = ["export_path", "resolve_use_gpu", "state_path", "steps_per_round", "total_steps", "train_round"]

"""IFD losses and pooled embeddings, scored by the model being tuned (docs/methods.md: IFD, Embeddings).

`batch` holds the batched math (plain torch, no Ray); `stage` runs it on Ray Data actors and
writes round-R/scores.parquet and round-R/embeddings.parquet.
"""

from raysel.scoring.batch import BatchScorer, Encoded, SampleScore, encode_sample
from raysel.scoring.stage import (
    SCORES_SCHEMA,
    Scorer,
    read_embeddings,
    read_scores,
    resolve_dtype,
    score_pool,
    score_table,
)

__all__ = [
    "SCORES_SCHEMA", "BatchScorer", "Encoded", "SampleScore",
    "Scorer", "encode_sample", "read_embeddings", "read_scores", "resolve_dtype", "score_pool",
    "score_table",
]

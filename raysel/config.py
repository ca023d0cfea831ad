"""One typed config per job: sections by stage, loaded from YAML, overridden by --set KEY=VALUE.

    cfg = load_config("configs/demo.yaml", ["selection.k=500", "training.method=full"])

Every field is validated at load time; a bad value raises ConfigError naming the field
and what it accepts. `pool.path: demo` and `model.path: demo` name the built-in demo pool
and demo model (generated / fetched into the cache on first use).
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "demo.yaml"
# Fields that say where and how a run executes, not what it computes: the only ones a resumed run
# may change (raysel.runs.RunDir.create).
RUN_NEUTRAL = {"ray.address", "ray.num_cpus", "run.dir", "run.mirror"}

log = logging.getLogger(__name__)


class UserError(ValueError):
    """A mistake in what the user asked for; the message says what and what to do. No traceback."""


class ConfigError(UserError):
    """A user error in the configuration; the message names the field."""


@dataclass
class PoolConfig:
    path: str = "demo"  # file, directory, glob, s3://..., a save_to_disk folder, or "demo"
    format: Literal["auto", "jsonl", "json", "parquet", "hf"] = "auto"
    id_field: str = "id"
    instruction_field: str = "instruction"
    input_field: str = "input"
    output_field: str = "output"
    messages_field: str = "messages"
    # Read only the first N records (for quick trials). A limit belongs to the pool it was set
    # with: a config file's limit does not follow a --set pool.path to another pool.
    limit: int | None = None


@dataclass
class ModelConfig:
    path: str = "demo"  # local folder, Hugging Face id (offline cache), .gguf file, or "demo"
    trust_remote_code: bool = False
    max_length: int = 1024  # tokens; longer texts are cut (docs/methods.md, IFD)


@dataclass
class ScoringConfig:
    prior_context: Literal["template", "plain"] = "template"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 on GPU, see scoring.py on CPU
    # Samples per Ray Data batch: the block sorted by length and cut into forward micro-batches.
    batch_size: int = 256
    # Padded tokens per forward micro-batch (0: 4096 on CPU in bf16, 1024 in fp32, 65536 on GPU).
    tokens_per_forward: int = 0
    # auto: GPU actors when the cluster has GPUs as the stage starts; yes: GPU actors even before
    # any node has a GPU (an autoscaling cluster starts GPU nodes for them); no: CPU actors.
    use_gpu: Literal["auto", "yes", "no"] = "auto"
    num_actors: int = 0  # 0: one per GPU, or enough CPU actors to fill the cluster
    # Above num_actors: the pool grows to this many actors as nodes join (Ray Data's autoscaling
    # actor pool; its pending actors are what makes the autoscaler add nodes). 0: a fixed pool.
    max_actors: int = 0
    cpus_per_actor: int = 0  # torch threads per CPU actor (0: CPUs / actors, see raysel/scoring/stage.py)
    embeddings: bool = True  # pooled hidden states, from the same forward pass
    embedding_layer: int = -1  # hidden-state layer to pool (-1: last)
    # Tokens the embedding averages: `response`, the answer tokens of the conditioned text (a system
    # prompt shared by every text would pull all cosines together); `text`, the whole conditioned text.
    embedding_span: Literal["response", "text"] = "response"
    lm_head_chunk: int = 2048  # answer positions per LM-head/cross-entropy chunk
    vocab_chunk: int = 0  # vocabulary ids per slice of that chunk's logits (0: 2048 on CPU, 16384 on GPU)
    # Run the token prefix that the texts share (the template's system turn) once and score on
    # top of its key/value cache: exact, and 20% fewer tokens to compute on the demo pool.
    share_prefix: bool = True


@dataclass
class SelectionConfig:
    """What every method shares: which method, how much per round, how many rounds."""

    # iterit; ifd (IFD re-scored by the tuned model each round, no diversity: IterIT's ablation);
    # ifd_static (top-k IFD of the base model, scored once, the same k every round); random;
    # kcenter; full (every valid row, one round). docs/methods.md says how each works.
    method: Literal["iterit", "daar", "ifd", "ifd_static", "random", "kcenter", "full"] = "iterit"
    k: float = 0.05  # below 1: a fraction of the valid pool (DaaR's select_fraction); 1 or more: a count
    rounds: int = 3
    # Mixture quotas, honoured by every method: each value of quota_field (a column of rows.parquet,
    # e.g. source, the input file; or a field of the input records, e.g. domain) takes at most its
    # quota of each round's k: a share (below 1) or a count; "*" caps every value not named.
    quota_field: str | None = None
    quotas: dict[str, float] = field(default_factory=dict)


@dataclass
class IterITConfig:
    """IterIT's own fields (docs/methods.md); the IFD baselines share ifd_max and the re-score pool."""

    diversity: Literal["tfidf", "embedding"] = "tfidf"
    features: Literal["hashed", "exact"] = "hashed"
    n_features: int = 2**22  # hashed buckets
    diversity_decay: float = 0.1  # gamma
    ifd_max: float = 1.0
    dedup_threshold: float | None = None  # cosine; embedding diversity (and kcenter) only
    # Which rows round r >= 1 re-scores: fixed = round 0's top rescore_factor * k; rolling = the
    # top rescore_factor * k of every row ranked on its newest score, re-drawn each round; all = all.
    rescore_pool: Literal["fixed", "rolling", "all"] = "fixed"
    rescore_factor: float = 3.0
    # The greedy: exact (in the driver) or greedi (distributed over shards of shard_rows candidates,
    # Ray tasks; docs/scaling.md); auto = greedi when the eligible candidates exceed shard_rows.
    greedy: Literal["auto", "exact", "greedi"] = "auto"
    shard_rows: int = 1_000_000


@dataclass
class DaaRConfig:
    """DaaR's own fields (docs/methods.md, DaaR). Its budget per round is selection.k."""

    seed_source: Literal["file", "synthesize"] = "file"
    seeds_path: str = "demo"  # JSONL of domain, instruction, input, output; demo: the demo pool's domains
    # The domains (default: every domain of the seeds file). To synthesise: "name: one-line description".
    domains: list[str] = field(default_factory=list)
    seeds_per_domain: int = 10  # synthesised seeds accepted per domain
    synth_max_similarity: float = 0.85  # cosine to every accepted seed of the domain must stay below
    synth_max_attempts: int = 100  # generations per domain before giving up
    synth_warmup: int = 3  # first generations asked with the domain's description only
    centroid_space: Literal["input", "probe"] = "input"  # mean input embeddings, or the probe features
    probe_size: int = 5000  # pool rows the heads learn from (all of a smaller pool)
    probe_layers: int = 3  # decoder layers the features come from (the rest are not run)
    kmeans_iterations: int = 20
    head_epochs: int = 5  # more makes the domain head overconfident: entropy near 0 everywhere
    head_batch_size: int = 64
    head_learning_rate: float = 1.0e-4
    head_val_fraction: float = 0.03
    # overall: the top k by predicted reward; per_domain: each pseudo-domain its quota of k, by reward
    select: Literal["overall", "per_domain"] = "overall"
    domain_shares: list[float] = field(default_factory=list)  # per_domain quotas, in domain order
    #                                                           (default: each pseudo-domain's share of the pool)


@dataclass
class TrainingConfig:
    method: Literal["lora", "full"] = "lora"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )
    learning_rate: float = 2e-4
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    batch_size: int = 4  # per worker, per step
    gradient_accumulation: int = 1
    epochs: int = 1  # passes over each round's selection
    num_workers: int = 1
    use_gpu: Literal["auto", "yes", "no"] = "auto"
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = False
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on GPU and on CPUs with native bf16
    merge_weights: bool = False  # also export merged full weights after each round
    max_grad_norm: float = 1.0  # gradient clipping (training.py); 0 turns it off
    log_every: int = 10  # optimizer steps between training loss log lines (training.py)
    cpus_per_worker: int = 0  # CPUs (torch threads) per training worker; 0: CPU training splits the
    #                           cluster's CPUs among the workers, GPU training asks for a GPU only (training.py)
    # Worker failures a round survives (a spot node taken back, a killed process): Ray Train starts
    # the workers again and the round starts over from the previous round's state.
    max_failures: int = 3


@dataclass
class EvalConfig:
    """Held-out evaluation (raysel/evaluate.py): run by the jobs after the last round when set."""

    heldout: list[str] = field(default_factory=list)  # JSONL files or folders; demo: the demo pool's sets
    accuracy_domains: list[str] = field(default_factory=lambda: ["arithmetic"])  # final-number exact match
    max_new_tokens: int = 128  # greedy answer length for the accuracy check


@dataclass
class RayConfig:
    address: str | None = None  # None: the cluster this job was submitted to, else a local one
    num_cpus: int | None = None  # for a local cluster only


@dataclass
class RunConfig:
    dir: str | None = None  # default: runs/<job>-<timestamp>
    seed: int = 0
    mirror: str | None = None  # s3://bucket/prefix (any pyarrow.fs URI): a copy of the run, stage by stage


@dataclass
class Config:
    pool: PoolConfig = field(default_factory=PoolConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    iterit: IterITConfig = field(default_factory=IterITConfig)
    daar: DaaRConfig = field(default_factory=DaaRConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


POSITIVE = {
    "model.max_length", "scoring.batch_size", "scoring.lm_head_chunk", "selection.k",
    "iterit.n_features", "selection.rounds", "iterit.rescore_factor", "iterit.shard_rows",
    "training.batch_size", "training.gradient_accumulation", "training.epochs",
    "training.num_workers", "training.lora_r", "training.learning_rate", "training.log_every",
    "daar.seeds_per_domain", "daar.synth_max_attempts", "daar.probe_size", "daar.probe_layers",
    "daar.kmeans_iterations", "eval.max_new_tokens", "daar.head_epochs", "daar.head_batch_size", "daar.head_learning_rate",
}
AUTOMATIC_AT_ZERO = {"scoring.tokens_per_forward", "scoring.vocab_chunk", "training.cpus_per_worker"}


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Read YAML (default: configs/demo.yaml), apply KEY=VALUE overrides, validate."""
    path = Path(path) if path else DEFAULT_CONFIG
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (pool, model, ...)")
    if isinstance(raw.get("run"), dict):
        raw["run"].pop("resume", None)  # saved by raysel before 0.2; --resume is not a setting
    file_pool = dict(raw.get("pool") or {})
    set_keys = set()
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"--set {item!r}: expected SECTION.FIELD=VALUE, e.g. selection.k=1000")
        section, name = key.split(".", 1)
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ConfigError(f"{section}: expected a mapping")
        raw[section][name] = yaml.safe_load(value) if value != "" else None
        set_keys.add(key)
    _scope_pool_limit(raw, file_pool, set_keys, path)
    return from_dict(raw)


def _scope_pool_limit(raw: dict, file_pool: dict, set_keys: set[str], path: Path) -> None:
    """A config file's pool.limit belongs to the file's pool.path: a pool named with --set
    pool.path is read whole unless --set pool.limit is given too (the demo's 500-row slice
    must never cut a user's own pool)."""
    limit = file_pool.get("limit")
    if not limit or "pool.path" not in set_keys or "pool.limit" in set_keys:
        return
    if raw["pool"].get("path") != file_pool.get("path", PoolConfig.path):
        raw["pool"]["limit"] = None
        log.info("pool.limit=%s of %s belongs to its pool.path=%s; %s is read whole (--set pool.limit=N "
                 "to cut it)", limit, path.name, file_pool.get("path", PoolConfig.path), raw["pool"]["path"])


def from_dict(raw: dict[str, Any]) -> Config:
    sections = {}
    hints = typing.get_type_hints(Config)
    for name, values in raw.items():
        if name not in hints:
            raise ConfigError(f"unknown config section {name!r}; sections: {', '.join(hints)}")
        sections[name] = _build_section(name, hints[name], values or {})
    cfg = Config(**sections)
    _check_values(cfg)
    return cfg


def _build_section(section: str, cls: type, values: dict[str, Any]):
    if not isinstance(values, dict):
        raise ConfigError(f"{section}: expected a mapping of fields, got {values!r}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        if section == "selection" and name in typing.get_type_hints(IterITConfig):
            raise ConfigError(f"selection.{name} is now iterit.{name} (IterIT's own fields have their own "
                              "section)")
        if name not in hints:
            raise ConfigError(f"unknown field {section}.{name}; fields: {', '.join(hints)}")
        if (section, name) == ("daar", "domains") and isinstance(value, list):
            value = [_domain_item(v) for v in value]
        kwargs[name] = _coerce(f"{section}.{name}", hints[name], value)
    return cls(**kwargs)


def _domain_item(value: Any) -> Any:
    """YAML reads an unquoted `- math: word problems` (or `[math: word problems]`) as a mapping."""
    if isinstance(value, dict) and len(value) == 1:
        ((name, description),) = value.items()
        return f"{name}: {description}"
    return value


def _coerce(key: str, tp: Any, value: Any) -> Any:
    """Check `value` against the annotation `tp`, converting the few lossless cases (int -> float)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not allowed; choose one of {', '.join(map(str, allowed))}")
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(key, arg, value)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} is not valid ({'; '.join(errors)})")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        _, value_tp = typing.get_args(tp)
        return {str(k): _coerce(f"{key}.{k}", value_tp, v) for k, v in value.items()}
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(key, item_tp, v) for v in value]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation for {key}: {tp}")


def _check_values(cfg: Config) -> None:
    for key in POSITIVE | AUTOMATIC_AT_ZERO:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if key in POSITIVE and value is not None and value <= 0:
            raise ConfigError(f"{key}: must be positive, got {value}")
        if key in AUTOMATIC_AT_ZERO and value < 0:
            raise ConfigError(f"{key}: 0 (automatic) or more, got {value}")
    if not 0.0 <= cfg.iterit.diversity_decay <= 1.0:
        raise ConfigError(f"iterit.diversity_decay: must be in [0, 1], got {cfg.iterit.diversity_decay}")
    t = cfg.iterit.dedup_threshold
    if t is not None and not -1.0 <= t <= 1.0:
        raise ConfigError(f"iterit.dedup_threshold: a cosine similarity in [-1, 1], got {t}")
    if cfg.selection.k >= 1 and cfg.selection.k != int(cfg.selection.k):
        raise ConfigError(f"selection.k: a count must be whole, got {cfg.selection.k}")
    d = cfg.daar
    if not 0.0 < d.synth_max_similarity <= 1.0 or not 0.0 <= d.head_val_fraction < 0.5:
        raise ConfigError("daar.synth_max_similarity: in (0, 1]; daar.head_val_fraction: in [0, 0.5)")
    if any(s < 0 for s in d.domain_shares) or (d.domain_shares and not sum(d.domain_shares)):
        raise ConfigError(f"daar.domain_shares: non-negative, not all zero, got {d.domain_shares}")
    if cfg.training.max_failures < 0:
        raise ConfigError(f"training.max_failures: 0 or more, got {cfg.training.max_failures}")
    q = cfg.selection
    if q.quotas and not q.quota_field:
        raise ConfigError("selection.quotas: name the field they divide with selection.quota_field")
    if any(v <= 0 for v in q.quotas.values()):
        raise ConfigError(f"selection.quotas: shares and counts must be positive, got {q.quotas}")
    if cfg.pool.limit is not None and cfg.pool.limit <= 0:
        raise ConfigError(f"pool.limit: must be positive, got {cfg.pool.limit}")


def resolve_k(k: float, n_valid: int) -> int:
    """selection.k below 1 is a fraction of the valid pool, otherwise a count (capped at the pool)."""
    count = round(k * n_valid) if k < 1 else int(k)
    return max(1, min(count, n_valid)) if n_valid else 0


def dump_config(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def flat(cfg: Config) -> dict[str, Any]:
    """{"section.field": value} of every field."""
    return {f"{section}.{name}": value
            for section, fields in cfg.to_dict().items() for name, value in fields.items()}


def result_changes(saved: Config, cfg: Config) -> dict[str, tuple[Any, Any]]:
    """{field: (saved value, new value)} of the fields that differ and can change results."""
    old, new = flat(saved), flat(cfg)
    return {k: (old[k], new[k]) for k in old if k not in RUN_NEUTRAL and old[k] != new[k]}

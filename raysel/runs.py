"""The run directory: the unit of reproducibility, and the one place that knows its layout.

    config.yaml, manifest.json, rows.parquet, round-R/{scores,embeddings,selection}.parquet, ...

Each stage writes its output under a temporary name, renames it when complete, then
leaves a completion marker (`.done/<stage>.json`, with its stats and the size of every file
the stage wrote): `RunDir.stage` does the marking. `--resume` trusts markers, never the mere
existence of a file, and a marker only while what it vouches for is there at the size it
recorded: a deleted or truncated output makes its stage run again. Temporary files a killed
run left behind are removed when it resumes. With `run.mirror` set, each stage's files are
copied to object storage as the stage completes (raysel.mirror).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shutil
import time
from datetime import datetime
from pathlib import Path

from raysel.config import Config, UserError, dump_config, load_config, result_changes
from raysel.mirror import Mirror

log = logging.getLogger(__name__)


ROWS_FILE = "rows.parquet"
SCORES_FILE = "scores.parquet"
EMBEDDINGS_FILE = "embeddings.parquet"
SELECTION_FILE = "selection.parquet"
SELECTED_FILE = "selected.jsonl"
RESCORE_POOL_FILE = "rescore_pool.txt"  # rolling: the ids the next round re-scores, best first
SEEDS_FILE = "seeds.jsonl"  # DaaR: the domain seeds the run used (from a file, or synthesised)
PROBE_FILE = "probe.parquet"  # DaaR: the probe set's and the seeds' features
PROBE_LABELS_FILE = "probe_labels.parquet"  # DaaR: the probe rows' k-means pseudo-domains
HEADS_FILE = "heads.safetensors"  # DaaR: the domain and reward heads
CHECKPOINT_DIR = "checkpoint"  # the tuned model, Hugging Face format
TRAIN_DIR = "train"  # Ray Train storage: train/round-R/final holds the DeepSpeed state
TRAIN_STATE_DIR = "final"  # the name each round's Ray Train checkpoint is reported under


def default_run_dir(job: str) -> Path:
    return Path("runs") / f"{job}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


class RunDir:
    def __init__(self, path: str | Path, mirror: Mirror | None = None):
        self.path = Path(path)
        self.mirror = mirror  # a copy in object storage (run.mirror), or None
        self.manifest_path = self.path / "manifest.json"
        self.markers = self.path / ".done"
        self.config_changes: dict = {}  # fields this process runs with that differ from config.yaml

    @classmethod
    def create(cls, cfg: Config, job: str, resume: bool = False, reuse: bool = False) -> RunDir:
        """Open the run directory for a job: a fresh one, or the same one again with `resume`
        (or `reuse`: a single stage run by hand in an existing run directory).

        config.yaml is written once, when the run starts, and never rewritten. A resume whose
        config differs from it in a field that changes results is refused; a stage run by hand
        with other settings records the fields that differ in its own stats."""
        run = cls(cfg.run.dir or default_run_dir(job), Mirror(cfg.run.mirror) if cfg.run.mirror else None)
        empty = not run.path.exists() or not any(run.path.iterdir())
        if not empty and not (resume or reuse):
            raise FileExistsError(f"run directory {run.path} is not empty: pass --resume to continue it, "
                                  "or choose another --run-dir")
        if run.mirror and not (resume or reuse) and run.mirror.holds_a_run():
            raise FileExistsError(f"run.mirror {run.mirror.uri} already holds a run: pass --resume to continue "
                                  "it, or choose another run.mirror")
        if run.mirror and resume and not run.completed():  # a new cluster picks the run up from the mirror
            run.mirror.restore(run.path)
        run.markers.mkdir(parents=True, exist_ok=True)
        if resume:
            run.remove_temporary()
        saved = run.path / "config.yaml"
        if saved.exists():
            run.config_changes = result_changes(load_config(saved), cfg)
            if run.config_changes and resume:
                raise UserError(f"{run.path} was started with another config; a resumed run keeps its own. "
                                f"Fields that differ: {_describe(run.config_changes)}. Resume without those "
                                "--config/--set changes, or start a new --run-dir")
        else:
            dump_config(cfg, saved)
        manifest = run.read_manifest()
        manifest.setdefault("job", job)
        manifest.setdefault("created", datetime.now().isoformat(timespec="seconds"))
        manifest.setdefault("stages", {})
        manifest.update(seed=cfg.run.seed, versions=_versions())
        run.write_manifest(manifest)
        if run.mirror:  # the config and manifest, and whatever an earlier failed upload left out
            run.mirror.sync(run.path)
        return run

    # --- the layout -------------------------------------------------------------------------

    @property
    def rows(self) -> Path:
        return self.path / ROWS_FILE

    def round_dir(self, r: int) -> Path:
        d = self.path / f"round-{r}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def scores(self, r: int) -> Path:
        return self.path / f"round-{r}" / SCORES_FILE

    def embeddings(self, r: int) -> Path:
        return self.path / f"round-{r}" / EMBEDDINGS_FILE

    def selection(self, r: int) -> Path:
        return self.path / f"round-{r}" / SELECTION_FILE

    def selected(self, r: int) -> Path:
        return self.path / f"round-{r}" / SELECTED_FILE

    def rescore_pool(self, r: int) -> Path:
        return self.path / f"round-{r}" / RESCORE_POOL_FILE

    @property
    def seeds(self) -> Path:
        return self.path / SEEDS_FILE

    def probe(self, r: int) -> Path:
        return self.path / f"round-{r}" / PROBE_FILE

    def probe_labels(self, r: int) -> Path:
        return self.path / f"round-{r}" / PROBE_LABELS_FILE

    def heads(self, r: int) -> Path:
        return self.path / f"round-{r}" / HEADS_FILE

    def checkpoint(self, r: int) -> Path:
        return self.path / f"round-{r}" / CHECKPOINT_DIR

    def train_storage(self) -> Path:
        return self.path.resolve() / TRAIN_DIR

    def train_state(self, r: int) -> Path:
        """Where round r leaves its Ray Train checkpoint (DeepSpeed state + export)."""
        return self.train_storage() / f"round-{r}" / TRAIN_STATE_DIR

    def newest(self, kind: str, r: int) -> list[Path]:
        """Round r's file of `kind` ("scores", "embeddings") and every earlier round's, newest first,
        those that exist: the newest counts for a row that several rounds scored."""
        return [p for p in (getattr(self, kind)(i) for i in range(r, -1, -1)) if p.exists()]

    # --- stages --------------------------------------------------------------------------------

    def stage(self, name: str, compute, force: bool = False) -> dict:
        """Run `compute()` once behind the marker `name`: skipped when marked and intact (unless
        `force`), timed, then marked with the stats it returns and the files it wrote. `compute`
        writes its outputs atomically (atomic_output), so a marked stage's outputs are complete."""
        if self.is_done(name) and not force:
            return self.stats(name)
        self.forget(name)
        before = self.files()
        self._set_stage(name, {"status": "running", "started": datetime.now().isoformat(timespec="seconds")})
        with timed() as seconds:
            stats = compute()
        self.mark_done(name, seconds(), stats, outputs=written_since(before, self.files()))
        return self.stats(name)

    # --- completion markers -------------------------------------------------------------

    def completed(self) -> list[str]:
        """The stages with a marker (intact or not)."""
        return sorted(p.stem for p in self.markers.glob("*.json")) if self.markers.is_dir() else []

    def is_done(self, stage: str) -> bool:
        """Marked, and every file the marker vouches for is there at the size it recorded."""
        marker = self.markers / f"{stage}.json"
        if not marker.exists():
            return False
        for rel, size in json.loads(marker.read_text()).get(OUTPUTS, {}).items():
            path = self.path / rel
            found = path.stat().st_size if path.is_file() else None
            if found != size:
                log.warning("stage %s: its output %s is %s (the marker recorded %d bytes); running the stage "
                            "again", stage, rel, "missing" if found is None else f"{found} bytes", size)
                self.forget(stage)
                return False
        return True

    def stats(self, stage: str) -> dict:
        record = json.loads((self.markers / f"{stage}.json").read_text())
        record.pop(OUTPUTS, None)
        return record

    def mark_done(self, stage: str, seconds: float, stats: dict | None = None, outputs: dict | None = None) -> None:
        """Record a stage as complete, with its stats, its wall time (`seconds` wins) and the
        size of each file it wrote (`outputs`: path relative to the run directory -> bytes)."""
        self.markers.mkdir(parents=True, exist_ok=True)
        stats = stats or {}
        if self.config_changes:  # a stage run by hand with other settings says so
            stats = {**stats, "config_differs": {k: new for k, (_, new) in self.config_changes.items()}}
        record = {**stats, "seconds": round(seconds, 3)}
        _atomic_write_text(self.markers / f"{stage}.json", json.dumps({**record, OUTPUTS: outputs or {}}, indent=2))
        self._set_stage(stage, {"status": "done", **record})
        self.push([*(outputs or {}), f"{self.markers.name}/{stage}.json", self.manifest_path.name])
        log.info("stage %s done in %.1fs %s", stage, seconds, stats or "")

    def _set_stage(self, stage: str, record: dict) -> None:
        """The manifest's view of a stage: running (since when), or done (its stats)."""
        manifest = self.read_manifest()
        manifest.setdefault("stages", {})[stage] = record
        self.write_manifest(manifest)

    def push(self, rels: list[str]) -> None:
        """Copy these files (relative paths) to run.mirror, in order; nothing without a mirror."""
        if self.mirror:
            self.mirror.push(self.path, rels)

    def forget(self, stage: str) -> None:
        """Drop a stage's marker so that it runs again."""
        (self.markers / f"{stage}.json").unlink(missing_ok=True)

    def files(self) -> dict[str, tuple[int, int]]:
        """Every file of the run (relative path -> (size, mtime in ns)) but the bookkeeping:
        the markers, the manifest, the report, temporary files."""
        out = {}
        for root, dirs, names in os.walk(self.path):
            dirs[:] = [d for d in dirs if not (Path(root) == self.path and d in BOOKKEEPING) and not _is_temp(d)]
            for name in names:
                path = Path(root) / name
                rel = path.relative_to(self.path).as_posix()
                if rel not in BOOKKEEPING and not _is_temp(name):
                    st = path.stat()
                    out[rel] = (st.st_size, st.st_mtime_ns)
        return out

    def remove_temporary(self) -> list[str]:
        """Remove what a killed run left half-written (temporary files and folders); their names."""
        found = []
        for root, dirs, names in os.walk(self.path):
            for name in [*dirs, *names]:
                if _is_temp(name):
                    found.append((Path(root) / name).relative_to(self.path).as_posix())
                    _remove(Path(root) / name)
            dirs[:] = [d for d in dirs if not _is_temp(d)]
        if found:
            log.warning("removed %d temporary file(s) a stopped run left: %s", len(found), ", ".join(found[:5]))
        return found

    # --- manifest -----------------------------------------------------------------------

    def read_manifest(self) -> dict:
        return json.loads(self.manifest_path.read_text()) if self.manifest_path.exists() else {}

    def write_manifest(self, manifest: dict) -> None:
        _atomic_write_text(self.manifest_path, json.dumps(manifest, indent=2, default=str))

    def update_manifest(self, **fields) -> None:
        manifest = self.read_manifest()
        manifest.update(fields)
        self.write_manifest(manifest)


OUTPUTS = "outputs"  # a marker's record of the files its stage wrote
BOOKKEEPING = {".done", "manifest.json", "report.md", "report", "config.yaml"}
TEMP_PREFIXES = (".features-", ".eval-input", ".probe-input")  # the distributed greedy's counts; inputs


def _is_temp(name: str) -> bool:
    """atomic_output's `.<name>.tmp-<pid>`, an embedding part's `.<hash>.tmp`, the prefixes above."""
    return name.startswith(".") and (".tmp" in name or name.startswith(TEMP_PREFIXES))


def written_since(before: dict, after: dict) -> dict[str, int]:
    """The files that are new or changed between two RunDir.files() listings: path -> size."""
    return {rel: size for rel, (size, mtime) in after.items() if before.get(rel) != (size, mtime)}


def _describe(changes: dict) -> str:
    return ", ".join(f"{k} ({old!r} -> {new!r})" for k, (old, new) in changes.items())


@contextlib.contextmanager
def atomic_output(final: str | Path):
    """Yield a temporary path beside `final`; on success move it into place (file or folder)."""
    final = Path(final)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    _remove(final)
    os.replace(tmp, final)


def write_parquet(table, path: str | Path, **options) -> None:
    """A pyarrow table to `path`, atomically (options: pyarrow.parquet.write_table's)."""
    import pyarrow.parquet as pq

    with atomic_output(path) as tmp:
        pq.write_table(table, tmp, **options)


def write_part(table, folder: str | Path) -> None:
    """One batch's rows as a Parquet file in `folder` (a dataset folder written by many actors),
    named by a hash of its ids: a batch that Ray Data retries after a failure overwrites its own
    file. Hidden under a dot name until complete: Parquet readers skip dot files."""
    import hashlib

    import pyarrow.parquet as pq

    folder = Path(folder)
    name = hashlib.sha1("\n".join(table["id"].to_pylist()).encode()).hexdigest()[:20]
    tmp = folder / f".{name}.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, folder / f"part-{name}.parquet")


def fresh_folder(path: str | Path) -> str:
    """An empty folder at `path` (what an interrupted run left there is removed); its path."""
    path = Path(path)
    _remove(path)
    path.mkdir(parents=True)
    return str(path)


@contextlib.contextmanager
def timed():
    """`with timed() as t: ...` then t() gives the seconds the block took."""
    start = time.perf_counter()
    end = []
    yield lambda: (end[0] if end else time.perf_counter()) - start
    end.append(time.perf_counter())


def _atomic_write_text(path: Path, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("raysel", "ray", "torch", "transformers", "peft", "deepspeed", "faiss-cpu", "numpy"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out

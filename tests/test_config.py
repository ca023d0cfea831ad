"""Config: YAML + --set overrides, validated with errors that name the field."""

import re
from pathlib import Path

import pytest
import yaml

from raysel.config import CONFIG_DIR, ConfigError, UserError, dump_config, load_config, resolve_k

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_configs_load():
    for path in CONFIG_DIR.glob("*.yaml"):
        load_config(path)
    for job in ("iterit", "daar"):  # each job's docstring names a config that exists
        named = re.findall(r"configs/[\w.-]+\.yaml", (ROOT / "jobs" / f"{job}.py").read_text())
        assert named and all((ROOT / n).exists() for n in named), named
    cfg = load_config(None, ["selection.k=1000", "training.lora_target_modules=[q_proj, v_proj]",
                             "iterit.dedup_threshold=0.95", "pool.limit=10", "daar.domains=[a: x, 'b: y']",
                             "daar.domain_shares=[1, 2]"])
    assert cfg.daar.domains == ["a: x", "b: y"] and cfg.daar.domain_shares == [1.0, 2.0]
    assert cfg.selection.k == 1000.0 and cfg.iterit.dedup_threshold == 0.95
    assert cfg.training.lora_target_modules == ["q_proj", "v_proj"] and cfg.pool.limit == 10
    assert cfg.model.path == "demo"  # the embedded default


@pytest.mark.parametrize("override, message", [
    ("selection.method=magic", "selection.method: 'magic' is not allowed; choose one of iterit, daar, ifd"),
    ("daar.probe_layers=0", "daar.probe_layers: must be positive"),
    ("daar.centroid_space=output", "daar.centroid_space: 'output' is not allowed; choose one of input, probe"),
    ("daar.domain_shares=[1, -1]", "daar.domain_shares: non-negative"),
    ("daar.synth_max_similarity=1.5", "daar.synth_max_similarity: in (0, 1]"),
    ("selection.k=-3", "selection.k: must be positive"),
    ("selection.k=10.5", "selection.k: a count must be whole"),
    ("iterit.diversity_decay=2", "iterit.diversity_decay: must be in [0, 1]"),
    ("selection.diversity=embedding", "selection.diversity is now iterit.diversity"),
    ("training.zero_stage=5", "training.zero_stage: 5 is not allowed; choose one of 0, 1, 2, 3"),
    ("training.batch_size=many", "training.batch_size: expected int, got 'many'"),
    ("scoring.embeddings=3", "scoring.embeddings: expected bool"),
    ("selection.kk=3", "unknown field selection.kk; fields: method, k, rounds"),
    ("nosuch.k=3", "unknown config section 'nosuch'"),
    ("selectionk=3", "expected SECTION.FIELD=VALUE"),
])
def test_bad_values_name_the_field(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value)


def test_bad_yaml_file(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"model": {"max_length": "long"}}))
    with pytest.raises(ConfigError, match="model.max_length: expected int"):
        load_config(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_resolve_k():
    assert resolve_k(0.05, 1000) == 50 and resolve_k(200, 1000) == 200 and resolve_k(5000, 1000) == 1000
    assert resolve_k(0.0001, 100) == 1 and resolve_k(0.5, 0) == 0


def test_a_config_files_pool_limit_stays_with_its_pool(tmp_path):
    """demo.yaml's 500-row slice belongs to the demo pool: a pool named by path is read whole."""
    assert load_config(None).pool.limit == 500  # the demo keeps its slice
    assert load_config(None, ["pool.path=my.jsonl"]).pool.limit is None
    assert load_config(None, ["pool.path=my.jsonl", "pool.limit=50"]).pool.limit == 50
    assert load_config(None, ["pool.path=demo"]).pool.limit == 500
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"pool": {"path": "a.jsonl", "limit": 7}}))
    assert load_config(tmp_path / "c.yaml").pool.limit == 7
    assert load_config(tmp_path / "c.yaml", ["pool.path=b.jsonl"]).pool.limit is None


def test_resume_keeps_the_config_the_run_started_with(tmp_path):
    from raysel.runs import RunDir

    run_dir = tmp_path / "run"
    cfg = load_config(None, [f"run.dir={run_dir}", "selection.k=20"])
    RunDir.create(cfg, "test")
    saved = (run_dir / "config.yaml").read_text()
    assert "resume" not in yaml.safe_load(saved)["run"]
    RunDir.create(load_config(run_dir / "config.yaml", ["ray.num_cpus=1"]), "test", resume=True)  # run-neutral
    with pytest.raises(UserError) as err:
        RunDir.create(load_config(None, [f"run.dir={run_dir}", "selection.k=30"]), "test", resume=True)
    assert "selection.k (20.0 -> 30.0)" in str(err.value)
    # a stage run by hand with other settings records them in its stats, never in config.yaml
    run = RunDir.create(load_config(run_dir / "config.yaml", ["selection.k=30"]), "test", reuse=True)
    run.mark_done("select-0", 1.0, {"selected": 30})
    assert run.stats("select-0")["config_differs"] == {"selection.k": 30.0}
    assert (run_dir / "config.yaml").read_text() == saved


def test_an_old_saved_config_with_run_resume_still_loads(tmp_path):
    cfg = load_config(None)
    dump_config(cfg, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text().replace("  seed: 0\n", "  seed: 0\n  resume: true\n")
    (tmp_path / "config.yaml").write_text(text)
    assert load_config(tmp_path / "config.yaml").run.seed == 0

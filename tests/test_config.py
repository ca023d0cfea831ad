"""Config: YAML + --set overrides, validated with errors that name the field."""

import pytest
import yaml

from raysel.config import CONFIG_DIR, ConfigError, load_config, resolve_k


def test_shipped_configs_load():
    for path in CONFIG_DIR.glob("*.yaml"):
        load_config(path)
    cfg = load_config(None, ["selection.k=1000", "training.lora_target_modules=[q_proj, v_proj]",
                             "selection.dedup_threshold=0.95", "pool.limit=10"])
    assert cfg.selection.k == 1000.0 and cfg.selection.dedup_threshold == 0.95
    assert cfg.training.lora_target_modules == ["q_proj", "v_proj"] and cfg.pool.limit == 10
    assert cfg.model.path == "demo"  # the embedded default


@pytest.mark.parametrize("override, message", [
    ("selection.method=magic", "selection.method: 'magic' is not allowed; choose one of iterit, random"),
    ("selection.k=-3", "selection.k: must be positive"),
    ("selection.k=10.5", "selection.k: a count must be whole"),
    ("selection.diversity_decay=2", "selection.diversity_decay: must be in [0, 1]"),
    ("training.zero_stage=5", "training.zero_stage: 5 is not allowed; choose one of 0, 1, 2, 3"),
    ("training.batch_size=many", "training.batch_size: expected int, got 'many'"),
    ("scoring.embeddings=3", "scoring.embeddings: expected bool"),
    ("selection.kk=3", "unknown field selection.kk; fields: method, k"),
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

"""cluster.yaml passes the Ray cluster launcher's own validation (the schema inside the ray
package, after the launcher fills its defaults), and says what raysel needs of a cluster."""

from pathlib import Path

import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cluster():
    from ray.autoscaler._private.util import prepare_config

    return prepare_config(yaml.safe_load((ROOT / "cluster.yaml").read_text()))


def test_cluster_yaml_passes_rays_validation_and_a_typo_does_not(cluster):
    from jsonschema import ValidationError
    from ray.autoscaler._private.util import validate_config

    validate_config(cluster)
    head = cluster["available_node_types"][cluster["head_node_type"]]
    with pytest.raises(ValidationError, match="resourcez"):  # the validator is not a no-op
        validate_config({**cluster, "available_node_types": {
            **cluster["available_node_types"], "typo": {**head, "resourcez": {}}}})


def test_the_head_schedules_nothing_and_gpu_workers_scale_from_zero(cluster):
    types = cluster["available_node_types"]
    assert types[cluster["head_node_type"]]["resources"] == {"CPU": 0}
    gpu = [t for name, t in types.items() if name != cluster["head_node_type"]]
    assert gpu and all(t["resources"].get("GPU", 0) >= 1 and t["min_workers"] == 0 for t in gpu)
    assert all(t["max_workers"] <= cluster["max_workers"] for t in gpu)


def test_the_image_runs_rays_pinned_version_and_setup_installs_the_gpu_extra(cluster):
    image = cluster["docker"]["image"]
    assert image.startswith(f"rayproject/ray:{ray.__version__}-") and "ray-ml" not in image
    assert any("[gpu]" in command for command in cluster["setup_commands"])


def test_the_cluster_configs_ask_for_gpus_and_keep_the_run_in_object_storage():
    from raysel.config import load_config

    for name in ("iterit-8b", "daar-8b"):
        cfg = load_config(ROOT / "configs" / f"{name}.yaml")
        assert cfg.scoring.use_gpu == "yes" and cfg.training.use_gpu == "yes"
        assert cfg.scoring.max_actors > cfg.scoring.num_actors, "the scorer pool grows with the cluster"
        assert cfg.run.mirror.startswith("s3://"), "the run's object-store copy (raysel.mirror)"

"""Shared fixtures: tiny random models built offline, and one Ray session for the whole run."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Llama with a ChatML chat template, saved as a normal HF folder."""
    from raysel.demo.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-chat"), chat_template=True)


@pytest.fixture(scope="session")
def tiny_model_dir_plain(tmp_path_factory):
    """The same, with no chat template (raysel falls back to its plain default template)."""
    from raysel.demo.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny-plain"), chat_template=False)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray cluster shared by every test that needs Ray (start-up costs seconds)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}})
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield ray
    ray.shutdown()

"""Shared fixtures: tiny random models built offline, one Ray session for the whole run, and a local
S3 endpoint for run.mirror."""

import logging
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


@pytest.fixture(scope="session")
def s3():
    """A local S3 endpoint (moto's server: the S3 API over HTTP); yields a function giving a fresh
    run.mirror URI in its bucket. The fake credentials are in os.environ, so jobs started as
    subprocesses reach it too."""
    from moto.server import ThreadedMotoServer
    from pyarrow import fs

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    keys = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    query = f"endpoint_override={host}:{port}&scheme=http&region=us-east-1"
    s3fs, _ = fs.FileSystem.from_uri(f"s3://raysel?{query}&allow_bucket_creation=true")
    s3fs.create_dir("raysel")
    names = iter(range(1000))
    yield lambda: f"s3://raysel/runs/{next(names)}?{query}"
    server.stop()
    for k, v in saved.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)

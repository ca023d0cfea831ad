"""What the README's Security section promises, checked on the source and the config: remote code
only when asked, nothing unpickled from user data, safe YAML, model paths checked before work."""

import ast
from pathlib import Path

import pytest

from raysel.config import CONFIG_DIR, UserError, load_config
from raysel.models import check_model_path

SOURCE = sorted((Path(__file__).resolve().parent.parent / "raysel").rglob("*.py"))
UNSAFE = {("yaml", "load"), ("yaml", "unsafe_load"), ("pickle", "load"), ("pickle", "loads"),
          ("cloudpickle", "loads"), ("torch", "load"), ("numpy", "load"), ("np", "load")}


def calls():
    for path in SOURCE:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
                yield path, owner, node.func.attr, node


def test_remote_code_runs_only_when_the_config_asks():
    for path, _, _, node in calls():
        for kw in node.keywords:
            if kw.arg == "trust_remote_code":
                assert not (isinstance(kw.value, ast.Constant) and kw.value.value is True), f"{path}:{node.lineno}"
    assert load_config(CONFIG_DIR / "demo.yaml").model.trust_remote_code is False


def test_nothing_is_unpickled_or_loaded_unsafely():
    found = [f"{path.name}:{node.lineno} {owner}.{name}" for path, owner, name, node in calls()
             if (owner, name) in UNSAFE]
    assert not found, found


def test_a_model_path_that_holds_no_model_is_refused_before_any_work(tmp_path):
    (tmp_path / "notes").mkdir()
    with pytest.raises(UserError, match="is not a model"):
        check_model_path(str(tmp_path / "notes"))
    with pytest.raises(UserError, match="does not exist"):
        check_model_path(str(tmp_path / "absent"))
    with pytest.raises(UserError, match="never downloads"):
        check_model_path("nobody/no-such-model-in-the-cache")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    check_model_path(str(tmp_path / "model"))
    check_model_path("tiny")

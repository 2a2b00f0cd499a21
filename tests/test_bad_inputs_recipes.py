"""Recipe mistakes through ``sparseyolo train``: the error names the recipe file and line, exit code 2.

Uses the ``bad_data`` and ``cli`` fixtures (conftest) and the recipe template of ``helpers.py``, as
``test_bad_inputs.py`` does.
"""

from __future__ import annotations

from helpers import _error, _proc, _recipe, _train_args


def test_recipe_unknown_modifier_tag(bad_data, cli, tmp_path):
    recipe = _recipe(tmp_path / "r.yaml", mod="GMPruningModifer")
    rc, log = cli(*_train_args(bad_data, tmp_path, "--recipe", recipe))
    _error(rc, log, "train", f"{recipe}:6", "!GMPruningModifer", "did you mean !GMPruningModifier")
    assert "label cache" not in log  # the recipe is read before the data scan
    assert not list(tmp_path.glob("exp*"))  # and a failed start leaves no empty run folder


def test_recipe_unknown_key(bad_data, cli, tmp_path):
    recipe = _recipe(tmp_path / "r.yaml", extra="    leave_enabledd: true\n")
    rc, log = cli(*_train_args(bad_data, tmp_path, "--recipe", recipe))
    _error(rc, log, "train", f"{recipe}:13", "'leave_enabledd'", "'leave_enabled'")


def test_recipe_params_matching_nothing(bad_data, cli, tmp_path):
    recipe = _recipe(tmp_path / "r.yaml", params='["model.4.conv.weigth"]')
    rc, log = cli(*_train_args(bad_data, tmp_path, "--recipe", recipe))
    msg = _error(rc, log, "train", f"{recipe}:7", "model.4.conv.weigth", "matches no parameter")
    assert "model.4.conv.weight" in msg.split("model.4.conv.weigth", 1)[1]  # the close names are listed


def test_recipe_args_unknown_variable(bad_data, cli, tmp_path):
    recipe = _recipe(tmp_path / "r.yaml")
    rc, log = cli(*_train_args(bad_data, tmp_path, "--recipe", recipe, "--recipe-args", "num_epochz=2"))
    _error(rc, log, "train", str(recipe), "'num_epochz'", "num_epochs")


def test_recipe_eval_import_is_refused(bad_data, tmp_path):
    sentinel = tmp_path / "PWNED"
    recipe = _recipe(tmp_path / "r.yaml", final=f"eval(__import__('os').system('touch {sentinel}'))")
    rc, log = _proc(*_train_args(bad_data, tmp_path, "--recipe", recipe), cwd=tmp_path)
    _error(rc, log, "train", f"{recipe}:6", "'final_sparsity'", "not allowed")
    assert not sentinel.exists()

"""Hyperparameter files: shipped values, validation errors, every key is known."""

from __future__ import annotations

import pytest
import yaml

from sparseyolo.engine.hyp import HYP_DIR, HYP_KEYS, load_hyp, shipped_hyps
from sparseyolo.utils.errors import ConfigError


def test_shipped_files_load_and_have_every_key():
    assert shipped_hyps() == ["hyp.finetune", "hyp.pruned", "hyp.pruned_quantized", "hyp.scratch"]
    for name in shipped_hyps():
        raw = yaml.safe_load((HYP_DIR / f"{name}.yaml").read_text())
        assert tuple(raw) == HYP_KEYS, name  # complete and in the canonical order
        assert load_hyp(name) == {k: float(v) for k, v in raw.items()}


@pytest.mark.real_data  # the published SparseML hyperparameter files are the reference
def test_pruned_hyps_equal_the_published_files(shared_dir):
    for name in ("hyp.pruned", "hyp.pruned_quantized"):
        published = yaml.safe_load((shared_dir / "recipes/sparseml" / f"{name}.yaml").read_text())
        assert load_hyp(name) == {k: float(v) for k, v in published.items()}


def test_names_and_paths(tmp_path):
    assert load_hyp("scratch") == load_hyp("hyp.scratch") == load_hyp("hyp.scratch.yaml")
    assert load_hyp("scratch")["lr0"] == 0.01 and load_hyp("finetune")["lr0"] == 0.0032
    p = tmp_path / "mine.yaml"
    p.write_text(yaml.safe_dump(load_hyp("finetune") | {"lr0": 0.02}))
    assert load_hyp(str(p))["lr0"] == 0.02
    with pytest.raises(ConfigError, match="not found; shipped: hyp.finetune"):
        load_hyp("nope")


def test_unknown_key_names_file_line_and_valid_keys(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("lr0: 0.01\nlrf: 0.1\nanchor_tt: 4.0\n")
    with pytest.raises(ConfigError) as e:
        load_hyp(p)
    msg = str(e.value)
    assert f"{p}:3 (key 'anchor_tt')" in msg and "did you mean 'anchor_t'" in msg
    assert "Valid keys: lr0, lrf, momentum" in msg and "mixup" in msg


def test_bad_values_and_missing_keys(tmp_path, caplog):
    p = tmp_path / "bad.yaml"
    p.write_text("lr0: fast\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:1 \(key 'lr0'\): expected a number"):
        load_hyp(p)
    p.write_text("fliplr: 1.5\n")
    with pytest.raises(ConfigError, match="fliplr.*outside"):
        load_hyp(p)
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_hyp(p)
    p.write_text("lr0: 0.02\n")  # partial file: the rest comes from hyp.scratch, with a warning
    hyp = load_hyp(p)
    assert hyp["lr0"] == 0.02 and hyp["anchor_t"] == 4.0 and "missing" in caplog.text

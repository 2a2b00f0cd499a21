"""Bad inputs through the real CLI: a clear message naming the file (and line/key), exit code 2, no traceback.

Dataset problems (corrupt images, bad label lines, missing images) are skipped and reported once per
dataset while the run goes on; config problems (data YAML, hyp, recipe, weights) stop the command with
``sparseyolo <cmd>: error: <file>[:line] [(key ...)]: ...``.

Most cases call ``sparseyolo.cli.main.main`` in-process through the ``cli`` fixture (an exception escaping
it is the traceback a user would see and fails the test); the few ``subprocess`` cases check the real
``python -m sparseyolo`` stderr. Everything runs on the ``bad_data`` fixture (generated shapes JPEGs and
every kind of broken sample, see conftest) with a quarter-width YOLOv3-tiny; the Darknet weights cut short
are a random-weight file written by ``save_darknet`` (``tiny_darknet``).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import yaml
from helpers import _error, _proc, _recipe, _train_args, _val_args


@pytest.fixture(scope="module")
def trained(bad_data) -> dict:
    """A 1-epoch CLI run at ``--img 100`` with a recipe file that is deleted afterwards."""
    root = bad_data["root"]
    recipe = _recipe(root / "prune.yaml")
    rc, log = _proc(
        "train",
        "--cfg",
        bad_data["cfg"],
        "--data",
        bad_data["data"],
        "--img",
        "100",
        "--batch-size",
        "4",
        "--epochs",
        "1",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--project",
        root / "runs",
        "--name",
        "rec",
        "--noplots",
        "--no-tensorboard",
        "--recipe",
        recipe,
        cwd=root,
    )
    assert rc == 0, log[-4000:]
    recipe.unlink()  # the recipe travels inside the checkpoint
    return {"run": root / "runs/rec", "weights": root / "runs/rec/weights/last.pt", "log": log}


# -- issue "foundation": datasets, data YAML, Darknet weights --------------------------------------------
def _assert_one_summary(log: str, bad_data: dict) -> None:
    lines = [ln for ln in log.splitlines() if "val.txt" in ln and "skipped" in ln]
    assert len(lines) == 1, f"expected one summary for the val set:\n{log[-4000:]}"
    summary = lines[0]
    for needle in (
        "val.txt:9",
        "missing.jpg",
        "random.jpg",
        "trunc.jpg",
        f"{bad_data['four_cols']}.txt:1",
        "4 columns",
        f"{bad_data['coord']}.txt:1",
        "1.7",
    ):
        assert needle in summary, f"{needle!r} missing from the summary: {summary}"
    assert bad_data["empty_label"] not in summary  # an empty label file is an image without objects


def test_train_skips_bad_samples_and_rounds_img(trained, bad_data):
    log = trained["log"]
    _assert_one_summary(log, bad_data)
    train_summary = [ln for ln in log.splitlines() if "train" in ln and "random.jpg" in ln]
    assert len(train_summary) == 1, log[-4000:]
    for needle in (f"{bad_data['text']}.txt:1", f"{bad_data['cls95']}.txt", "class 95", f"{bad_data['dup']}.txt:2"):
        assert needle in train_summary[0], f"{needle!r} missing from the summary: {train_summary[0]}"
    assert "train: 4 images" in log  # 6 + random.jpg, less 3 skipped; the duplicate row is just dropped
    assert "--img 100 is not a multiple of the max stride 32; using 128" in log
    opt = yaml.safe_load((trained["run"] / "opt.yaml").read_text())
    assert opt["img_size"] == 128


def test_val_skips_bad_samples_in_one_summary(trained, bad_data):
    rc, log = _proc(
        "val",
        "--weights",
        trained["weights"],
        "--data",
        bad_data["data"],
        "--img",
        "64",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--project",
        bad_data["root"] / "runs/val",
        "--noplots",
        cwd=bad_data["root"],
    )
    assert rc == 0, log[-4000:]
    _assert_one_summary(log, bad_data)
    # 6 listed + 2 corrupt + 1 missing = 9 entries; 5 skipped; the empty-label image stays
    assert "val: 4 images" in log


def test_detect_skips_corrupt_images(trained, bad_data, cli):
    rc, log = cli(
        "detect",
        "--weights",
        trained["weights"],
        "--source",
        bad_data["root"] / "val/images",
        "--img",
        "64",
        "--device",
        "cpu",
        "--project",
        bad_data["root"] / "runs/detect",
    )
    assert rc == 0, log[-3000:]
    assert "random.jpg" in log and "skipped" in log
    assert "7 images" in log  # the truncated JPEG still decodes partially, as in OpenCV


def test_data_yaml_without_names(trained, bad_data, cli, tmp_path):
    rc, log = cli(*_val_args(trained["weights"], bad_data["root"] / "nonames.yaml", tmp_path))
    _error(rc, log, "val", "nonames.yaml", "'names'")
    rc, log = cli(*_train_args(dict(bad_data, data=bad_data["root"] / "nonames.yaml"), tmp_path))
    _error(rc, log, "train", "nonames.yaml", "'names'")


def test_data_yaml_syntax_error_names_line(trained, bad_data, cli, tmp_path):
    bad = tmp_path / "syntax.yaml"
    bad.write_text("train: [a\nnames: [x]\n")
    rc, log = cli(*_val_args(trained["weights"], bad, tmp_path))
    msg = _error(rc, log, "val", f"{bad}:2", "invalid YAML")
    assert "<unicode string>" not in msg


@pytest.fixture(scope="module")
def cut_weights(bad_data, tiny_darknet) -> tuple[Path, Path]:
    """A Darknet .weights file for the quarter-width model of ``bad_data["cfg"]`` cut in the middle: at
    a float boundary plus 2 bytes (not a whole number of floats), and at the float boundary."""
    raw = tiny_darknet["weights"].read_bytes()
    aligned = bad_data["root"] / "half4.weights"
    aligned.write_bytes(raw[: len(raw) // 2 // 4 * 4])  # the 20-byte header keeps the floats aligned
    half = bad_data["root"] / "half.weights"
    half.write_bytes(raw[: len(raw) // 2 // 4 * 4 + 2])
    return half, aligned


def test_truncated_darknet_weights(cut_weights, bad_data, cli, tmp_path):
    half, aligned = cut_weights
    rc, log = cli(*_val_args(half, bad_data["data"], tmp_path, "--cfg", bad_data["cfg"]))
    _error(rc, log, "val", str(half))
    rc, log = cli(*_val_args(aligned, bad_data["data"], tmp_path, "--cfg", bad_data["cfg"]))
    _error(rc, log, "val", str(aligned), "ran out")
    rc, log = cli(*_train_args(bad_data, tmp_path, "--weights", aligned))
    _error(rc, log, "train", str(aligned))


def test_truncated_darknet_weights_message_says_so(cut_weights, bad_data, cli, tmp_path):
    """Both cuts should tell the user the file is incomplete, not only that its size is odd."""
    for weights in cut_weights:
        rc, log = cli(*_val_args(weights, bad_data["data"], tmp_path, "--cfg", bad_data["cfg"]))
        msg = _error(rc, log, "val", str(weights))
        assert any(w in msg for w in ("truncated", "ran out", "too short", "incomplete", "cut short")), msg


def test_truncated_darknet_weights_detect_subprocess(cut_weights, bad_data, tmp_path):
    rc, log = _proc(
        "detect",
        "--weights",
        cut_weights[0],
        "--cfg",
        bad_data["cfg"],
        "--source",
        bad_data["root"] / "val/images",
        "--img",
        "64",
        "--device",
        "cpu",
        "--project",
        tmp_path,
        cwd=tmp_path,
    )
    _error(rc, log, "detect", str(cut_weights[0]))


@pytest.mark.parametrize("case", ["data", "hyp", "recipe", "weights", "source"])
def test_missing_files_are_named(case, trained, bad_data, cli, tmp_path):
    nope = tmp_path / f"nope-{case}.yaml"
    if case == "source":
        rc, log = cli("detect", "--weights", trained["weights"], "--source", nope, "--project", tmp_path)
        _error(rc, log, "detect", str(nope))
        return
    if case == "weights":
        rc, log = cli("val", "--weights", nope, "--data", bad_data["data"], "--project", tmp_path)
        _error(rc, log, "val", str(nope), "not found")
        return
    extra = {"data": ["--data", nope], "hyp": ["--hyp", nope], "recipe": ["--recipe", nope]}[case]
    rc, log = cli(*_train_args(bad_data, tmp_path, *extra))
    _error(rc, log, "train", str(nope), "not found")


def test_data_yaml_split_path_not_found(bad_data, cli, tmp_path):
    data = yaml.safe_load(bad_data["data"].read_text())
    bad = tmp_path / "nosplit.yaml"
    bad.write_text(yaml.safe_dump(dict(data, train=str(tmp_path / "no-such-dir"))))
    rc, log = cli(*_train_args(dict(bad_data, data=bad), tmp_path))
    _error(rc, log, "train", f"{bad} (key 'train')", str(tmp_path / "no-such-dir"))


# -- issue "training" ------------------------------------------------------------------------------------
def test_unknown_hyp_key_lists_valid_keys(bad_data, cli, tmp_path):
    hyp = tmp_path / "hyp.yaml"
    hyp.write_text("lr0: 0.01\nmomentum: 0.9\nlearning_rate: 0.1\n")
    rc, log = cli(*_train_args(bad_data, tmp_path, "--hyp", hyp))
    msg = _error(rc, log, "train", f"{hyp}:3 (key 'learning_rate')", "Valid keys")
    assert "lr0" in msg and "mosaic" in msg
    assert not list(tmp_path.glob("exp*"))


def test_empty_training_set(bad_data, cli, tmp_path):
    rc, log = cli(*_train_args(dict(bad_data, data=bad_data["root"] / "empty.yaml"), tmp_path))
    _error(rc, log, "train", "empty.yaml (key 'train')", str(bad_data["root"] / "empty/images"), "no usable images")
    assert not list(tmp_path.glob("exp*"))


@pytest.fixture(scope="module")
def cut_checkpoint(trained) -> Path:
    raw = trained["weights"].read_bytes()
    cut = trained["run"].parent / "cut.pt"
    cut.write_bytes(raw[: len(raw) // 2])
    return cut


def test_truncated_checkpoint_weights_and_resume(cut_checkpoint, bad_data, cli, tmp_path):
    rc, log = cli(*_train_args(bad_data, tmp_path, "--weights", cut_checkpoint))
    _error(rc, log, "train", str(cut_checkpoint), "truncated or corrupt")
    rc, log = cli("train", "--resume", cut_checkpoint, "--workers", "0", "--device", "cpu")
    _error(rc, log, "train", str(cut_checkpoint), "truncated or corrupt")


# -- issue "export" --------------------------------------------------------------------------------------
def test_export_corrupt_checkpoint(cut_checkpoint, cli):
    rc, log = cli("export", "--weights", cut_checkpoint, "--img-size", "64", "64")
    _error(rc, log, "export", str(cut_checkpoint), "truncated or corrupt")


def test_export_random_bytes_checkpoint(cli, tmp_path):
    """Random bytes are a corrupt file, not a 'pickled' checkpoint; never advise weights_only=False."""
    junk = tmp_path / "junk.pt"
    junk.write_bytes(bytes(random.Random(1).randrange(256) for _ in range(5000)))
    rc, log = cli("export", "--weights", junk)
    msg = _error(rc, log, "export", str(junk))
    assert "weights_only" not in msg and "Ultralytics" not in msg, msg


@pytest.mark.parametrize("suffix", [".onnx", ".yaml"])
def test_export_of_a_file_that_is_no_checkpoint(suffix, exported, bad_data, cli, tmp_path):
    """An ONNX file or a YAML is not weights: say so instead of asking for --cfg (a Darknet-only hint)."""
    wrong = tmp_path / f"model{suffix}"
    wrong.write_bytes(exported[2].read_bytes() if suffix == ".onnx" else bad_data["data"].read_bytes())
    rc, log = cli("export", "--weights", wrong)
    msg = _error(rc, log, "export", str(wrong))
    assert "pass --cfg" not in msg, msg


@pytest.fixture(scope="module")
def exported(trained) -> tuple[int, str, Path]:
    """``export --img-size 500 500`` of the recipe run, whose recipe file no longer exists."""
    assert not (trained["run"].parents[1] / "prune.yaml").exists()
    rc, log = _proc("export", "--weights", trained["weights"], "--img-size", "500", "500", cwd=trained["run"])
    return rc, log, trained["weights"].with_suffix(".onnx")


def test_export_rounds_img_size_and_needs_no_recipe_file(exported, trained):
    import onnx
    from onnx import numpy_helper

    rc, log, onnx_path = exported
    assert rc == 0, log[-4000:]
    assert "not a multiple of the max stride 32; using [512, 512]" in log
    model = onnx.load(str(onnx_path))
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 512, 512]
    ckpt = torch.load(trained["weights"], map_location="cpu", weights_only=True)
    assert "GMPruningModifier" in ckpt["recipe"]
    # the pruned conv (model.4, 50% of its weights) is still sparse in the exported graph
    sparsest = max(float((numpy_helper.to_array(t) == 0).mean()) for t in model.graph.initializer if len(t.dims) == 4)
    assert sparsest >= 0.45


# -- issue "benchmark" -----------------------------------------------------------------------------------
BENCH = ("--time", "0.2", "--warmup", "0", "--quiet")


def test_benchmark_non_onnx_files(bad_data, trained, cli, tmp_path):
    rc, log = cli("benchmark", bad_data["data"], *BENCH)
    _error(rc, log, "benchmark", str(bad_data["data"]), "not an ONNX model")
    rc, log = cli("benchmark", trained["weights"], *BENCH)
    _error(rc, log, "benchmark", str(trained["weights"]), "not an ONNX model", "sparseyolo export")
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(trained["weights"].read_bytes()[:4096])
    rc, log = cli("benchmark", fake, *BENCH)
    _error(rc, log, "benchmark", str(fake), "cannot be read as an ONNX model")


def test_benchmark_missing_engine_is_reported(exported, cli, tmp_path, monkeypatch):
    # isolate from a real DeepSparse venv: the variable wins over ./.venv-deepsparse and the checkout's
    monkeypatch.setenv("SPARSEYOLO_DEEPSPARSE_PYTHON", str(tmp_path / "no-venv/bin/python"))
    monkeypatch.chdir(tmp_path)
    rc, log = cli("benchmark", exported[2], "--engine", "onnxruntime,deepsparse", *BENCH)
    assert rc == 0, log[-3000:]  # onnxruntime still ran
    assert "deepsparse: not installed" in log and "setup_deepsparse.sh" in log and "no-venv" in log
    assert "| onnxruntime |" in log
    rc, log = cli("benchmark", exported[2], "--engine", "deepsparse", *BENCH)
    assert rc == 1 and "not installed" in log and "Traceback" not in log  # nothing could run: exit 1


def test_benchmark_static_shape_conflict(exported, cli):
    onnx_path = exported[2]
    rc, log = cli("benchmark", onnx_path, "--img", "320", *BENCH)
    _error(rc, log, "benchmark", str(onnx_path), "static shape [1, 3, 512, 512]", "--img")

"""Bad inputs through the real CLI: a clear message naming the file (and line/key), exit code 2, no traceback.

Dataset problems (corrupt images, bad label lines, missing images) are skipped and reported once per
dataset while the run goes on; config problems (data YAML, hyp, recipe, weights) stop the command with
``sparseyolo <cmd>: error: <file>[:line] [(key ...)]: ...``.

Most cases call ``sparseyolo.cli.main.main`` in-process (an exception escaping it is the traceback a user
would see and fails the test); the few ``subprocess`` cases check the real ``python -m sparseyolo`` stderr.
Everything runs on copies of a few coco128 images in tmp with a quarter-width YOLOv3-tiny.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch
import yaml

from sparseyolo.cli.main import main

REPO = Path(__file__).resolve().parents[1]

# a recipe that prunes one conv to 50% within the first epoch; {mod}/{params}/{final}/{extra} make bad variants
RECIPE = """\
num_epochs: 1
modifiers:
  - !EpochRangeModifier
    start_epoch: 0.0
    end_epoch: eval(num_epochs)
  - !{mod}
    params: {params}
    init_sparsity: 0.05
    final_sparsity: {final}
    start_epoch: 0.0
    end_epoch: 1.0
    update_frequency: 0.5
{extra}"""


def _recipe(
    path: Path,
    mod: str = "GMPruningModifier",
    params: str = '["model.4.conv.weight"]',
    final: str = "0.5",
    extra: str = "",
) -> Path:
    path.write_text(RECIPE.format(mod=mod, params=params, final=final, extra=extra))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, shared_dir) -> dict:
    """6 train / 6 val coco128 copies plus every kind of broken sample, data YAMLs and a tiny model YAML."""
    root = tmp_path_factory.mktemp("bad")
    coco = shared_dir / "data/coco128"
    for split, src in (("train", "train2017"), ("val", "val2017")):
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
        for img in sorted((coco / "images" / src).glob("*.jpg"))[:6]:
            shutil.copy(img, root / split / "images" / img.name)
            label = coco / "labels" / src / f"{img.stem}.txt"
            if label.is_file():
                shutil.copy(label, root / split / "labels" / label.name)
    val = sorted((root / "val/images").glob("*.jpg"))
    rng = random.Random(0)
    # a corrupt JPEG (random bytes) and a truncated one, each with a valid label
    for d in ("train", "val"):
        (root / d / "images/random.jpg").write_bytes(bytes(rng.randrange(256) for _ in range(2000)))
        (root / d / "labels/random.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    train = sorted((root / "train/images").glob("0*.jpg"))
    (root / "train/labels" / f"{train[0].stem}.txt").write_text("a b c d e\n")  # not numbers
    (root / "train/labels" / f"{train[1].stem}.txt").write_text("95 0.5 0.5 0.1 0.1\n")  # class id >= nc
    (root / "train/labels" / f"{train[2].stem}.txt").write_text("0 0.5 0.5 0.1 0.1\n" * 2)  # duplicate row
    (root / "val/images/trunc.jpg").write_bytes(val[0].read_bytes()[: val[0].stat().st_size // 3])
    (root / "val/labels/trunc.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (root / "val/labels" / f"{val[1].stem}.txt").write_text("")  # empty = no objects: fine, not an error
    (root / "val/labels" / f"{val[2].stem}.txt").write_text("0 0.5 0.5 0.1\n")  # 4 columns
    (root / "val/labels" / f"{val[3].stem}.txt").write_text("0 1.7 0.5 0.1 0.1\n")  # coordinate 1.7
    listed = [str(p) for p in sorted((root / "val/images").glob("*.jpg"))] + [str(root / "val/images/missing.jpg")]
    (root / "val.txt").write_text("\n".join(listed) + "\n")
    names = (shared_dir / "darknet-cfg/coco.names").read_text().split("\n")[:80]
    data = {"train": str(root / "train/images"), "val": str(root / "val.txt"), "names": names}
    (root / "data.yaml").write_text(yaml.safe_dump(data))
    (root / "nonames.yaml").write_text(yaml.safe_dump({k: v for k, v in data.items() if k != "names"}))
    (root / "empty/images").mkdir(parents=True)
    (root / "empty.yaml").write_text(yaml.safe_dump(dict(data, train=str(root / "empty/images"))))
    model = yaml.safe_load((REPO / "src/sparseyolo/configs/models/yolov3-tiny.yaml").read_text())
    model["width_multiple"] = 0.25
    (root / "tiny.yaml").write_text(yaml.safe_dump(model, sort_keys=False))
    return {
        "root": root,
        "data": root / "data.yaml",
        "cfg": root / "tiny.yaml",
        "empty_label": val[1].stem,
        "four_cols": val[2].stem,
        "coord": val[3].stem,
        "text": train[0].stem,
        "cls95": train[1].stem,
        "dup": train[2].stem,
    }


def _proc(*args, cwd: Path, env: dict | None = None, timeout: float = 240) -> tuple[int, str]:
    """``python -m sparseyolo ARGS`` -> (exit code, stdout + stderr); never a traceback on stderr."""
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    out = subprocess.run(
        [sys.executable, "-m", "sparseyolo", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
    )
    assert "Traceback" not in out.stderr, out.stderr[-4000:]
    return out.returncode, out.stdout + out.stderr


@pytest.fixture
def cli(capfd, caplog):
    """``cli(*args) -> (exit code, everything printed or logged)`` through ``main()`` in this process."""
    caplog.set_level(logging.INFO)

    def call(*args) -> tuple[int, str]:
        capfd.readouterr()
        caplog.clear()
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:  # argparse usage errors
            rc = e.code
        except BaseException:  # what a user would see as a traceback
            pytest.fail(f"sparseyolo {' '.join(map(str, args))} raised:\n{traceback.format_exc()}")
        out, err = capfd.readouterr()
        return rc, out + err + caplog.text

    return call


def _error(rc: int, text: str, cmd: str, *needles: str) -> str:
    """Assert exit 2 with ``sparseyolo CMD: error: ...`` containing every needle; return the message."""
    marker = f"sparseyolo {cmd}: error: "
    assert rc == 2, f"exit code {rc}, expected 2:\n{text[-3000:]}"
    assert marker in text, text[-3000:]
    msg = text[text.index(marker) + len(marker) :]
    for needle in needles:
        assert needle in msg, f"{needle!r} not in the error message: {msg}"
    assert "Traceback" not in text
    return msg


def _train_args(tiny: dict, project: Path, *extra) -> list:
    return [
        "train",
        "--cfg",
        tiny["cfg"],
        "--data",
        tiny["data"],
        "--img",
        "64",
        "--batch-size",
        "4",
        "--epochs",
        "1",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--project",
        project,
        "--noplots",
        "--no-tensorboard",
        "--noval",
        *extra,
    ]


@pytest.fixture(scope="module")
def trained(tiny) -> dict:
    """A 1-epoch CLI run at ``--img 100`` with a recipe file that is deleted afterwards."""
    root = tiny["root"]
    recipe = _recipe(root / "prune.yaml")
    rc, log = _proc(
        "train",
        "--cfg",
        tiny["cfg"],
        "--data",
        tiny["data"],
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
def _assert_one_summary(log: str, tiny: dict) -> None:
    lines = [ln for ln in log.splitlines() if "val.txt" in ln and "skipped" in ln]
    assert len(lines) == 1, f"expected one summary for the val set:\n{log[-4000:]}"
    summary = lines[0]
    for needle in (
        "val.txt:9",
        "missing.jpg",
        "random.jpg",
        "trunc.jpg",
        f"{tiny['four_cols']}.txt:1",
        "4 columns",
        f"{tiny['coord']}.txt:1",
        "1.7",
    ):
        assert needle in summary, f"{needle!r} missing from the summary: {summary}"
    assert tiny["empty_label"] not in summary  # an empty label file is an image without objects


def test_train_skips_bad_samples_and_rounds_img(trained, tiny):
    log = trained["log"]
    _assert_one_summary(log, tiny)
    train_summary = [ln for ln in log.splitlines() if "train" in ln and "random.jpg" in ln]
    assert len(train_summary) == 1, log[-4000:]
    for needle in (f"{tiny['text']}.txt:1", f"{tiny['cls95']}.txt", "class 95", f"{tiny['dup']}.txt:2"):
        assert needle in train_summary[0], f"{needle!r} missing from the summary: {train_summary[0]}"
    assert "train: 4 images" in log  # 6 + random.jpg, less 3 skipped; the duplicate row is just dropped
    assert "--img 100 is not a multiple of the max stride 32; using 128" in log
    opt = yaml.safe_load((trained["run"] / "opt.yaml").read_text())
    assert opt["img_size"] == 128


def test_val_skips_bad_samples_in_one_summary(trained, tiny):
    rc, log = _proc(
        "val",
        "--weights",
        trained["weights"],
        "--data",
        tiny["data"],
        "--img",
        "64",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--project",
        tiny["root"] / "runs/val",
        "--noplots",
        cwd=tiny["root"],
    )
    assert rc == 0, log[-4000:]
    _assert_one_summary(log, tiny)
    # 6 listed + 2 corrupt + 1 missing = 9 entries; 5 skipped; the empty-label image stays
    assert "val: 4 images" in log


def test_detect_skips_corrupt_images(trained, tiny, cli):
    rc, log = cli(
        "detect",
        "--weights",
        trained["weights"],
        "--source",
        tiny["root"] / "val/images",
        "--img",
        "64",
        "--device",
        "cpu",
        "--project",
        tiny["root"] / "runs/detect",
    )
    assert rc == 0, log[-3000:]
    assert "random.jpg" in log and "skipped" in log
    assert "7 images" in log  # the truncated JPEG still decodes partially, as in OpenCV


def test_data_yaml_without_names(trained, tiny, cli, tmp_path):
    rc, log = cli(
        "val",
        "--weights",
        trained["weights"],
        "--data",
        tiny["root"] / "nonames.yaml",
        "--img",
        "64",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--project",
        tmp_path,
    )
    _error(rc, log, "val", "nonames.yaml", "'names'")
    rc, log = cli(*_train_args(dict(tiny, data=tiny["root"] / "nonames.yaml"), tmp_path))
    _error(rc, log, "train", "nonames.yaml", "'names'")


def test_data_yaml_syntax_error_names_line(trained, tiny, cli, tmp_path):
    bad = tmp_path / "syntax.yaml"
    bad.write_text("train: [a\nnames: [x]\n")
    rc, log = cli(
        "val",
        "--weights",
        trained["weights"],
        "--data",
        bad,
        "--img",
        "64",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--project",
        tmp_path,
    )
    msg = _error(rc, log, "val", f"{bad}:2", "invalid YAML")
    assert "<unicode string>" not in msg


@pytest.fixture(scope="module")
def cut_weights(tiny, shared_dir) -> tuple[Path, Path]:
    """yolov3-tiny.weights cut in half (odd byte count) and cut at a float boundary."""
    raw = (shared_dir / "weights/yolov3-tiny.weights").read_bytes()
    half = tiny["root"] / "half.weights"
    half.write_bytes(raw[: len(raw) // 2])
    aligned = tiny["root"] / "half4.weights"
    aligned.write_bytes(raw[: len(raw) // 2 // 4 * 4])
    return half, aligned


def test_truncated_darknet_weights(cut_weights, tiny, cli, tmp_path):
    half, aligned = cut_weights
    rc, log = cli(
        "val",
        "--weights",
        half,
        "--cfg",
        "yolov3-tiny",
        "--data",
        tiny["data"],
        "--img",
        "64",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--project",
        tmp_path,
    )
    _error(rc, log, "val", str(half))
    rc, log = cli(
        "val",
        "--weights",
        aligned,
        "--cfg",
        "yolov3-tiny",
        "--data",
        tiny["data"],
        "--img",
        "64",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--project",
        tmp_path,
    )
    _error(rc, log, "val", str(aligned), "ran out")
    rc, log = cli(*_train_args(tiny, tmp_path, "--weights", aligned))
    _error(rc, log, "train", str(aligned))


def test_truncated_darknet_weights_message_says_so(cut_weights, tiny, cli, tmp_path):
    """Both cuts should tell the user the file is incomplete, not only that its size is odd."""
    for weights in cut_weights:
        rc, log = cli(
            "val",
            "--weights",
            weights,
            "--cfg",
            "yolov3-tiny",
            "--data",
            tiny["data"],
            "--img",
            "64",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--project",
            tmp_path,
        )
        msg = _error(rc, log, "val", str(weights))
        assert any(w in msg for w in ("truncated", "ran out", "too short", "incomplete", "cut short")), msg


def test_truncated_darknet_weights_detect_subprocess(cut_weights, tiny, tmp_path):
    rc, log = _proc(
        "detect",
        "--weights",
        cut_weights[0],
        "--cfg",
        "yolov3-tiny",
        "--source",
        tiny["root"] / "val/images",
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
def test_missing_files_are_named(case, trained, tiny, cli, tmp_path):
    nope = tmp_path / f"nope-{case}.yaml"
    if case == "source":
        rc, log = cli("detect", "--weights", trained["weights"], "--source", nope, "--project", tmp_path)
        _error(rc, log, "detect", str(nope))
        return
    if case == "weights":
        rc, log = cli("val", "--weights", nope, "--data", tiny["data"], "--project", tmp_path)
        _error(rc, log, "val", str(nope), "not found")
        return
    extra = {"data": ["--data", nope], "hyp": ["--hyp", nope], "recipe": ["--recipe", nope]}[case]
    rc, log = cli(*_train_args(tiny, tmp_path, *extra))
    _error(rc, log, "train", str(nope), "not found")


def test_data_yaml_split_path_not_found(tiny, cli, tmp_path):
    data = yaml.safe_load(tiny["data"].read_text())
    bad = tmp_path / "nosplit.yaml"
    bad.write_text(yaml.safe_dump(dict(data, train=str(tmp_path / "no-such-dir"))))
    rc, log = cli(*_train_args(dict(tiny, data=bad), tmp_path))
    _error(rc, log, "train", f"{bad} (key 'train')", str(tmp_path / "no-such-dir"))


# -- issue "training" ------------------------------------------------------------------------------------
def test_unknown_hyp_key_lists_valid_keys(tiny, cli, tmp_path):
    hyp = tmp_path / "hyp.yaml"
    hyp.write_text("lr0: 0.01\nmomentum: 0.9\nlearning_rate: 0.1\n")
    rc, log = cli(*_train_args(tiny, tmp_path, "--hyp", hyp))
    msg = _error(rc, log, "train", f"{hyp}:3 (key 'learning_rate')", "Valid keys")
    assert "lr0" in msg and "mosaic" in msg
    assert not list(tmp_path.glob("exp*"))


def test_empty_training_set(tiny, cli, tmp_path):
    rc, log = cli(*_train_args(dict(tiny, data=tiny["root"] / "empty.yaml"), tmp_path))
    _error(rc, log, "train", "empty.yaml (key 'train')", str(tiny["root"] / "empty/images"), "no usable images")
    assert not list(tmp_path.glob("exp*"))


@pytest.fixture(scope="module")
def cut_checkpoint(trained) -> Path:
    raw = trained["weights"].read_bytes()
    cut = trained["run"].parent / "cut.pt"
    cut.write_bytes(raw[: len(raw) // 2])
    return cut


def test_truncated_checkpoint_weights_and_resume(cut_checkpoint, tiny, cli, tmp_path):
    rc, log = cli(*_train_args(tiny, tmp_path, "--weights", cut_checkpoint))
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
def test_export_of_a_file_that_is_no_checkpoint(suffix, exported, tiny, cli, tmp_path):
    """An ONNX file or a YAML is not weights: say so instead of asking for --cfg (a Darknet-only hint)."""
    wrong = tmp_path / f"model{suffix}"
    wrong.write_bytes(exported[2].read_bytes() if suffix == ".onnx" else tiny["data"].read_bytes())
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


def test_benchmark_non_onnx_files(tiny, trained, cli, tmp_path):
    rc, log = cli("benchmark", tiny["data"], *BENCH)
    _error(rc, log, "benchmark", str(tiny["data"]), "not an ONNX model")
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

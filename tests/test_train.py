"""End-to-end training on a few generated shapes images (the ``tiny_data`` fixture: 80 class names) with a
quarter-width YOLOv3-tiny at 64 pixels."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from conftest import stop_after_epoch
from helpers import FAST, _load

from sparseyolo.engine.setup import TrainConfig
from sparseyolo.engine.trainer import NonFiniteLossError, Trainer, train
from sparseyolo.utils.errors import ConfigError, DataError


def test_full_run_writes_every_output(tiny_data, tmp_path):
    save_dir = train(
        cfg=tiny_data["cfg"],
        data=tiny_data["data"],
        epochs=2,
        project=str(tmp_path),
        img_size=70,
        batch_size=4,
        workers=0,
        device="cpu",
        tensorboard=True,
    )
    assert save_dir == tmp_path / "exp"
    for name in (
        "weights/last.pt",
        "weights/best.pt",
        "results.csv",
        "opt.yaml",
        "hyp.yaml",
        "results.png",
        "labels.jpg",
        "train_batch0.jpg",
        "val_batch0_pred.jpg",
        "PR_curve.png",
        "F1_curve.png",
        "P_curve.png",
        "R_curve.png",
        "confusion_matrix.png",
    ):
        assert (save_dir / name).is_file(), name
    assert list(save_dir.glob("events.out.tfevents.*"))
    rows = list(csv.reader(open(save_dir / "results.csv")))
    assert rows[0][:4] == ["epoch", "train/box_loss", "train/obj_loss", "train/cls_loss"] and len(rows) == 3
    opt = yaml.safe_load((save_dir / "opt.yaml").read_text())
    assert opt["img_size"] == 96  # 70 rounded up to a multiple of 32
    last = _load(save_dir / "weights/last.pt")
    assert last["optimizer"] is None and last["epoch"] == 1 and last["ema"] is not None
    assert last["hyp"]["lr0"] == 0.01 and last["train_args"]["epochs"] == 2
    # a second run increments the folder name
    assert (
        train(
            cfg=tiny_data["cfg"],
            data=tiny_data["data"],
            epochs=1,
            project=str(tmp_path),
            noval=True,
            nosave=True,
            **FAST,
        )
        == tmp_path / "exp2"
    )


def test_resume_is_exact(tiny_data, tmp_path):
    common = dict(cfg=tiny_data["cfg"], data=tiny_data["data"], epochs=3, project=str(tmp_path), noval=True, **FAST)
    ref = train(name="ref", **common)
    t = Trainer(TrainConfig(name="cut", **common))
    t.register_hooks([stop_after_epoch(1)])
    with pytest.raises(KeyboardInterrupt):
        t.train()
    cut = tmp_path / "cut"
    assert _load(cut / "weights/last.pt")["epoch"] == 1
    train(resume=str(cut / "weights/last.pt"), workers=0, device="cpu")
    a, b = _load(ref / "weights/last.pt"), _load(cut / "weights/last.pt")
    assert a["epoch"] == b["epoch"] == 2
    for key in ("model", "ema"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs after resume"
    assert a["ema_updates"] == b["ema_updates"]
    rows = list(csv.reader(open(cut / "results.csv")))
    assert [r[0] for r in rows[1:]] == ["0", "1", "2"]
    with pytest.raises(Exception, match="already finished"):
        train(resume=str(cut / "weights/last.pt"), device="cpu")


def test_non_finite_loss_stops_and_keeps_checkpoint(tiny_data, tmp_path):
    t = Trainer(
        TrainConfig(cfg=tiny_data["cfg"], data=tiny_data["data"], epochs=3, project=str(tmp_path), noval=True, **FAST)
    )
    real = t.loss_fn

    def poisoned(preds, targets):
        loss, items = real(preds, targets)
        if t.epoch == 1:
            loss = loss * float("nan")
        return loss, items

    t.loss_fn = poisoned
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at epoch 2, batch 0.*last good checkpoint"):
        t.train()
    last = _load(t.weights_dir / "last.pt")
    assert last["epoch"] == 0 and last["optimizer"] is not None  # untouched, still resumable


def test_errors(tiny_data, tmp_path):
    bad = tmp_path / "hyp.yaml"
    bad.write_text("lr0: 0.01\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"hyp.yaml:2 \(key 'learning_rate'\).*Valid keys"):
        train(cfg=tiny_data["cfg"], data=tiny_data["data"], hyp=str(bad), project=str(tmp_path), **FAST)
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    data = tmp_path / "empty.yaml"
    data.write_text(yaml.safe_dump({"train": str(empty / "images"), "val": str(empty / "images"), "names": ["a"]}))
    with pytest.raises(DataError):
        train(cfg=tiny_data["cfg"], data=str(data), project=str(tmp_path), **FAST)
    with pytest.raises(ConfigError, match="--weights.*--cfg"):
        train(data=tiny_data["data"], project=str(tmp_path), **FAST)


def test_cli_transfer_freeze_and_unknown_hyp(tiny_data, tmp_path):
    """Fine-tune an 80-class checkpoint on a 3-class dataset through the CLI."""
    from sparseyolo.data.synthetic import make_shapes_dataset

    src = train(
        cfg=tiny_data["cfg"], data=tiny_data["data"], epochs=1, project=str(tmp_path), name="src", noval=True, **FAST
    )
    shapes = make_shapes_dataset(tmp_path / "shapes", n_train=8, n_val=4, img_size=64)
    cmd = [
        sys.executable,
        "-m",
        "sparseyolo",
        "train",
        "--weights",
        str(src / "weights/last.pt"),
        "--data",
        str(shapes),
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
        str(tmp_path),
        "--name",
        "ft",
        "--freeze",
        "3",
        "--noval",
        "--noplots",
        "--no-tensorboard",
        "--hyp",
        "finetune",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    log = out.stdout + out.stderr
    assert "Transferred 68/72 items" in log and "froze 6 parameter tensors" in log  # all but the 4 head tensors
    ck = _load(tmp_path / "ft/weights/last.pt")
    assert ck["names"] == ["square", "circle", "triangle"] and ck["hyp"]["lr0"] == 0.0032
    frozen = "model.0.conv.weight"
    assert torch.equal(ck["model"][frozen], _load(src / "weights/last.pt")["ema"][frozen])
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr0: 0.01\nmixupp: 0.1\n")
    out = subprocess.run(cmd[:-1] + [str(bad)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "sparseyolo train: error:" in out.stderr and "mixupp" in out.stderr
    assert "Traceback" not in out.stderr


def test_finetune_darknet_weights(tiny_darknet, tmp_path, caplog):
    """Darknet .weights (80 classes; random values from ``save_darknet``) fine-tuned on a 3-class set:
    transferred, and rescaled by default; a checkpoint made from them is left as it is."""
    from sparseyolo.data.synthetic import make_shapes_dataset

    shapes = make_shapes_dataset(tmp_path / "shapes", n_train=4, n_val=2, img_size=64)
    caplog.set_level("INFO")
    run = train(
        weights=str(tiny_darknet["weights"]),
        cfg=str(tiny_darknet["cfg"]),
        data=str(shapes),
        epochs=1,
        project=str(tmp_path),
        noval=True,
        **FAST,
    )
    assert "Transferred" in caplog.text
    assert "rescaled 11 pretrained conv weights" in caplog.text  # the default for Darknet .weights
    ck = _load(run / "weights/last.pt")
    assert ck["model_yaml"]["nc"] == 3 and ck["model"]["model.20.m.0.weight"].shape[0] == 3 * 8
    caplog.clear()  # a checkpoint is left as it is unless asked
    train(weights=str(run / "weights/last.pt"), data=str(shapes), epochs=1, project=str(tmp_path), noval=True, **FAST)
    assert "rescaled" not in caplog.text


@pytest.mark.slow
def test_sigkill_then_resume(tiny_data, tmp_path):
    """Kill -9 a CLI run mid-training, resume it, and check it finishes with intact files."""
    cmd = [
        sys.executable,
        "-m",
        "sparseyolo",
        "train",
        "--cfg",
        tiny_data["cfg"],
        "--data",
        tiny_data["data"],
        "--img",
        "96",
        "--batch-size",
        "2",
        "--epochs",
        "6",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--project",
        str(tmp_path),
        "--noplots",
        "--no-tensorboard",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    last = tmp_path / "exp/weights/last.pt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert last.exists(), "no checkpoint appeared"
    time.sleep(0.3)  # into the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = _load(last)["epoch"]
    assert done_before < 5, "the run finished before it could be killed"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "sparseyolo",
            "train",
            "--resume",
            "--project",
            str(tmp_path),
            "--workers",
            "0",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for f in ("last.pt", "best.pt"):
        ck = _load(tmp_path / "exp/weights" / f)
        assert ck["optimizer"] is None
    assert _load(last)["epoch"] == 5
    rows = list(csv.reader(open(tmp_path / "exp/results.csv")))
    assert [int(r[0]) for r in rows[1:]] == list(range(6))
    assert not list((tmp_path / "exp/weights").glob(".*.tmp"))  # no half-written files left over

"""``sparseyolo train`` flag values no run can use: exit 2 with the flag named, before any work is done."""

from __future__ import annotations

import pytest
from helpers import _error, _train_args


@pytest.mark.parametrize(
    "flag, value, needle",
    [
        ("--img", "0", "--img-size must be an integer >= 1, got 0"),
        ("--img", "-64", "--img-size must be an integer >= 1"),
        ("--batch-size", "0", "--batch-size must be an integer >= 1"),
        ("--epochs", "0", "--epochs must be an integer >= 1"),
        ("--workers", "-1", "--workers must be an integer >= 0"),
        ("--label-smoothing", "1.5", "--label-smoothing must be in [0, 1)"),
        ("--freeze", "999", "--freeze 999 would freeze every layer of this 21-layer model; use at most 20"),
    ],
)
def test_unusable_train_flags(flag, value, needle, bad_data, cli, tmp_path):
    rc, log = cli(*_train_args(bad_data, tmp_path, flag, value))
    _error(rc, log, "train", needle)
    assert not list(tmp_path.glob("exp*"))  # nothing was started


@pytest.fixture(scope="module")
def checkpoint(bad_data) -> str:
    """A 1-epoch checkpoint of the quarter-width model on ``bad_data`` (in-process, no validation)."""
    from sparseyolo.engine.trainer import train

    run = train(
        cfg=str(bad_data["cfg"]),
        data=str(bad_data["data"]),
        epochs=1,
        img_size=64,
        batch_size=4,
        workers=0,
        device="cpu",
        project=str(bad_data["root"] / "runs"),
        name="flags",
        noval=True,
        noplots=True,
        tensorboard=False,
    )
    return str(run / "weights/last.pt")


@pytest.mark.parametrize(
    "cmd, flag, value",
    [
        ("val", "--img", "0"),
        ("val", "--batch-size", "0"),
        ("detect", "--img", "0"),
        ("detect", "--img", "-32"),
    ],
)
def test_unusable_val_detect_flags(cmd, flag, value, checkpoint, bad_data, cli, tmp_path):
    where = (
        ["--data", bad_data["data"], "--workers", "0"]
        if cmd == "val"
        else ["--source", bad_data["root"] / "val/images"]
    )
    rc, log = cli(cmd, "--weights", checkpoint, *where, "--device", "cpu", "--project", tmp_path, flag, value)
    _error(rc, log, cmd, flag)

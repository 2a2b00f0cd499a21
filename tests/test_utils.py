import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from sparseyolo.utils.boxes import bbox_iou, box_iou, scale_boxes, xywh2xyxy, xyxy2xywh
from sparseyolo.utils.errors import SparseYoloError
from sparseyolo.utils.io import atomic_torch_save, atomic_write_text, increment_path
from sparseyolo.utils.registry import Registry


def test_registry_suggests_close_names():
    reg = Registry("model")

    @reg.register("yolov3-spp")
    def build():
        return 1

    assert reg.get("yolov3-spp") is build
    with pytest.raises(SparseYoloError, match="did you mean 'yolov3-spp'"):
        reg.get("yolov3-sp")
    with pytest.raises(ValueError):
        reg.register("yolov3-spp")(build)


def test_atomic_write_leaves_no_temp_files(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "hello")
    atomic_torch_save({"x": torch.ones(3)}, tmp_path / "w" / "b.pt")
    assert (tmp_path / "a.txt").read_text() == "hello"
    assert torch.load(tmp_path / "w" / "b.pt", weights_only=True)["x"].sum() == 3
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["a.txt", "b.pt"]
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "c.pt"
    atomic_torch_save({"v": 1}, target)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_torch_save({"v": Boom()}, target)
    assert torch.load(target, weights_only=True) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_increment_path(tmp_path):
    assert increment_path(tmp_path / "exp").name == "exp"
    assert increment_path(tmp_path / "exp").name == "exp2"
    assert increment_path(tmp_path / "exp").name == "exp3"
    assert increment_path(tmp_path / "exp", exist_ok=True).name == "exp"


def test_box_conversions_round_trip():
    rng = np.random.default_rng(0)
    xywh = rng.uniform(10, 100, size=(50, 4))
    assert np.allclose(xyxy2xywh(xywh2xyxy(xywh)), xywh)
    t = torch.tensor(xywh)
    assert torch.allclose(xyxy2xywh(xywh2xyxy(t)), t)


def test_box_iou_known_values():
    a = torch.tensor([[0.0, 0, 10, 10]])
    b = torch.tensor([[0.0, 0, 10, 10], [5, 5, 15, 15], [20, 20, 30, 30]])
    iou = box_iou(a, b)[0]
    assert torch.allclose(iou, torch.tensor([1.0, 25 / 175, 0.0]), atol=1e-6)
    # element-wise CIoU equals IoU for identical boxes and is lower for offset ones
    same = bbox_iou(a, a, xywh=False, CIoU=True)
    off = bbox_iou(a, b[1:2], xywh=False, CIoU=True)
    assert torch.allclose(same, torch.ones(1), atol=1e-6)
    assert off.item() < 25 / 175


def test_scale_boxes_inverts_letterbox():
    # a 200x100 (w x h) image letterboxed into 64x64: gain 0.32, vertical pad 16
    boxes = torch.tensor([[10.0, 20.0, 110.0, 80.0]])
    gain, pad = 0.32, (0.0, 16.0)
    lb = boxes.clone() * gain
    lb[:, [1, 3]] += pad[1]
    back = scale_boxes((64, 64), lb, (100, 200))
    assert torch.allclose(back, boxes, atol=1e-4)


def test_cli_help_and_module_entry():
    out = subprocess.run(
        [sys.executable, "-m", "sparseyolo", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert out.returncode == 0
    assert "sparseyolo" in out.stdout

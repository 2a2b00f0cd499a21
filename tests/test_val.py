"""Validation loop end to end, the ONNX backend against PyTorch, and `sparseyolo val`."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from sparseyolo.evaluation.validation import validate
from sparseyolo.runtime.backends import Backend, OnnxBackend, TorchBackend, load_backend

NAMES = ["a", "b", "c"]
SIZES = [(120, 200), (160, 90), (100, 100), (240, 130), (64, 300)]  # (h, w), varied aspect ratios


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """Five images of varied shapes with 1-3 boxes each, plus a data YAML."""
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i, (h, w) in enumerate(SIZES):
            img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            cv2.imwrite(str(root / "images" / split / f"{i + 1:06d}.png"), img)
            rows = []
            for _ in range(rng.integers(1, 4)):
                bw, bh = rng.uniform(0.1, 0.5, 2)
                cx, cy = rng.uniform(bw / 2, 1 - bw / 2), rng.uniform(bh / 2, 1 - bh / 2)
                rows.append(f"{rng.integers(0, 3)} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}")
            (root / "labels" / split / f"{i + 1:06d}.txt").write_text("\n".join(rows) + "\n")
    data = root / "tiny.yaml"
    data.write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val", "names": NAMES}))
    return data


def _loader(data, img_size=128, batch_size=2, rect=False):
    from sparseyolo.data.config import load_data_config
    from sparseyolo.data.dataset import create_dataloader

    cfg = load_data_config(data)
    return create_dataloader(cfg["val"], img_size, batch_size, 32, rect=rect, workers=0)[0]


class OracleBackend(Backend):
    """Returns the batch's own labels as predictions (in letterboxed pixels), minus ``drop`` of them."""

    kind = "oracle"

    def __init__(self, nc=3, drop_every=0):
        self.names, self.nc, self.drop_every = list(NAMES), nc, drop_every
        self.targets = None

    def feed(self, loader):
        for batch in loader:
            self.targets, self.shape = batch[1], batch[0].shape
            yield batch

    def preprocess(self, imgs):
        return imgs

    def forward(self, x):
        bs, _, h, w = self.shape
        t = self.targets
        pred = torch.zeros(bs, 10, 5 + self.nc)
        for i in range(bs):
            rows = t[t[:, 0] == i]
            for k, r in enumerate(rows):
                if self.drop_every and k % self.drop_every == 0:
                    continue
                pred[i, k, :4] = r[2:6] * torch.tensor([w, h, w, h])
                pred[i, k, 4] = 1.0
                pred[i, k, 5 + int(r[1])] = 0.9 - 0.01 * k
        return pred


@pytest.mark.parametrize("rect", [False, True])
def test_oracle_gives_perfect_map(tiny_data, tmp_path, rect):
    oracle = OracleBackend()
    loader = _loader(tiny_data, rect=rect)
    metrics, maps = validate(
        oracle,
        oracle.feed(loader),
        names=NAMES,
        save_dir=tmp_path,
        plots=True,
        save_json=True,
        save_txt=True,
        save_conf=True,
        verbose=True,
    )
    assert metrics["mAP50"] == pytest.approx(1.0)
    assert metrics["mAP50-95"] > 0.99  # label rounding through letterbox and back
    assert metrics["precision"] == pytest.approx(1.0) and metrics["recall"] == pytest.approx(1.0)
    assert maps.shape == (3,)
    labels = (Path(tiny_data).parent / "labels" / "val").glob("*.txt")
    present = {NAMES[int(row.split()[0])] for f in labels for row in f.read_text().splitlines()}
    assert metrics["ap50_per_class"] == pytest.approx(dict.fromkeys(present, 1.0))  # every labelled class
    assert metrics["coco/mAP50"] == pytest.approx(1.0, abs=1e-6)
    # predictions.json: image ids from the numeric stems, boxes in original pixels
    recs = json.loads((tmp_path / "predictions.json").read_text())
    assert {r["image_id"] for r in recs} == {1, 2, 3, 4, 5}
    lbl = np.loadtxt(Path(tiny_data).parent / "labels" / "val" / "000005.txt", ndmin=2)
    r5 = sorted([r for r in recs if r["image_id"] == 5], key=lambda r: r["bbox"][0])
    cls, cx, cy, bw, bh = sorted(lbl.tolist(), key=lambda r: r[1] - r[3] / 2)[0]
    assert r5[0]["bbox"] == pytest.approx([(cx - bw / 2) * 300, (cy - bh / 2) * 64, bw * 300, bh * 64], abs=1.0)
    # saved txt labels are normalised to the original image
    saved = np.loadtxt(tmp_path / "labels" / "000005.txt", ndmin=2)
    assert saved.shape[1] == 6
    np.testing.assert_allclose(np.sort(saved[:, 1]), np.sort(lbl[:, 1]), atol=0.01)
    for f in ("PR_curve.png", "F1_curve.png", "confusion_matrix.png", "val_batch0_pred.jpg", "val_batch0_labels.jpg"):
        assert (tmp_path / f).stat().st_size > 1000, f


def test_dropped_predictions_lower_recall(tiny_data):
    oracle = OracleBackend(drop_every=2)  # drops the 1st and 3rd box of each image
    metrics, _ = validate(oracle, oracle.feed(_loader(tiny_data)), names=NAMES)
    n_total = sum(len(p.read_text().split("\n")) - 1 for p in (Path(tiny_data).parent / "labels" / "val").glob("*.txt"))
    assert 0 < metrics["recall"] < 1 and metrics["precision"] == pytest.approx(1.0)
    assert 0 < metrics["mAP50"] < 1 and n_total > 5


# ---------------------------------------------------------------------------------- ONNX backend
@pytest.fixture(scope="module")
def tiny_model():
    from sparseyolo.models import DetectionModel

    torch.manual_seed(0)
    m = DetectionModel("yolov3-tiny", nc=3, width_multiple=0.125, names=NAMES).eval()
    return m


class _RawHead4D(torch.nn.Module):
    """Exports the head outputs in the flat (bs, na*no, ny, nx) layout, optionally with a uint8 input."""

    def __init__(self, model, uint8=False):
        super().__init__()
        self.model, self.uint8 = model, uint8

    def forward(self, x):
        if self.uint8:
            x = x.float() / 255
        raw = self.model(x)
        return [r.permute(0, 1, 4, 2, 3).reshape(r.shape[0], -1, r.shape[2], r.shape[3]) for r in raw]


def _export(module, path, x, meta, n_out, dynamic=True):
    import onnx

    names = [f"out{i}" for i in range(n_out)]
    axes = {"images": {0: "batch", 2: "h", 3: "w"}} if dynamic else None
    torch.onnx.export(
        module,
        x,
        str(path),
        input_names=["images"],
        output_names=names,
        opset_version=13,
        dynamic_axes=axes,
        dynamo=False,
    )
    m = onnx.load(str(path))
    for k, v in meta.items():
        p = m.metadata_props.add()
        p.key, p.value = k, v
    onnx.save(m, str(path))
    return path


def _meta(model):
    d = model.detect
    return {
        "names": json.dumps(model.names),
        "stride": json.dumps(d.stride.tolist()),
        "anchors": json.dumps(d.anchors.tolist()),
        "decode": json.dumps(d.decode),
        "imgsz": "[128, 128]",
    }


@pytest.mark.parametrize("layout", ["5d", "4d", "4d-uint8", "decoded"])
def test_onnx_backend_matches_torch(tiny_model, tmp_path, layout):
    model = tiny_model
    imgs = torch.randint(0, 255, (2, 3, 128, 96), dtype=torch.uint8)
    ref = TorchBackend(model)(imgs)
    x = imgs.float() / 255
    if layout == "5d":
        model.export_raw = True
        path = _export(model, tmp_path / "m.onnx", x, _meta(model), 2)
        model.export_raw = False
    elif layout == "decoded":

        class Decoded(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, x):
                return self.m(x)[0]

        path = _export(Decoded(model), tmp_path / "m.onnx", x, {"names": json.dumps(NAMES)}, 1)
    else:
        uint8 = layout.endswith("uint8")
        model.export_raw = True
        path = _export(_RawHead4D(model, uint8), tmp_path / "m.onnx", imgs if uint8 else x, _meta(model), 2)
        model.export_raw = False
    be = load_backend(path)
    assert isinstance(be, OnnxBackend) and be.names == NAMES and be.stride == 32
    assert be.uint8 == (layout == "4d-uint8")
    out = be(imgs)
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)


def test_onnx_fixed_shape_and_batch(tiny_model, tmp_path):
    model = tiny_model
    model.export_raw = True
    path = _export(model, tmp_path / "fixed.onnx", torch.zeros(1, 3, 128, 128), _meta(model), 2, dynamic=False)
    model.export_raw = False
    be = OnnxBackend(path)
    assert be.fixed_shape == (128, 128) and be.fixed_batch == 1
    imgs = torch.randint(0, 255, (3, 3, 128, 128), dtype=torch.uint8)
    torch.testing.assert_close(be(imgs), TorchBackend(model)(imgs), rtol=1e-3, atol=1e-3)
    from sparseyolo.utils.errors import WeightsError

    with pytest.raises(WeightsError, match="128x128"):
        be(torch.zeros(1, 3, 96, 96, dtype=torch.uint8))


def test_validate_real_model_with_loss(tiny_model, tiny_data, tmp_path):
    calls = []

    def fake_loss(raw, targets):
        calls.append((len(raw), targets.shape[1]))
        return torch.tensor(1.0), torch.tensor([0.1, 0.2, 0.3])

    tiny_model.train()  # as the trainer hands it over; validate must evaluate in eval mode and restore
    bn_mean = tiny_model.model[0].bn.running_mean.clone()
    metrics, maps = validate(
        tiny_model, _loader(tiny_data), compute_loss=fake_loss, save_dir=tmp_path / "loss", save_json=True
    )
    assert tiny_model.training is True
    tiny_model.eval()
    assert torch.equal(bn_mean, tiny_model.model[0].bn.running_mean)  # no BN statistics updated
    assert calls and calls[0] == (2, 6)
    assert metrics["box_loss"] == pytest.approx(0.1) and metrics["cls_loss"] == pytest.approx(0.3)
    assert set(metrics["speed"]) == {"preprocess", "inference", "nms"}
    # the loss pass changes nothing else: same detections and metrics as an eval-mode model without it
    plain, plain_maps = validate(tiny_model, _loader(tiny_data), save_dir=tmp_path / "plain", save_json=True)
    assert "box_loss" not in plain
    dets = json.loads((tmp_path / "loss" / "predictions.json").read_text())
    assert dets and dets == json.loads((tmp_path / "plain" / "predictions.json").read_text())
    for k in ("precision", "recall", "mAP50", "mAP50-95"):
        assert metrics[k] == plain[k], k
    np.testing.assert_array_equal(maps, plain_maps)


def test_cli_val_onnx(tiny_model, tiny_data, tmp_path, capsys):
    from sparseyolo.cli.main import main

    tiny_model.export_raw = True
    path = _export(tiny_model, tmp_path / "m.onnx", torch.zeros(1, 3, 128, 128), _meta(tiny_model), 2)
    tiny_model.export_raw = False
    rc = main(
        [
            "val",
            "--weights",
            str(path),
            "--data",
            str(tiny_data),
            "--img",
            "128",
            "--batch-size",
            "2",
            "--conf-thres",
            "0.01",
            "--iou",
            "0.5",
            "--project",
            str(tmp_path / "runs"),
            "--name",
            "exp",
            "--save-json",
            "--no-rect",
            "--workers",
            "0",
        ]
    )
    assert rc == 0
    out_dir = tmp_path / "runs" / "exp"
    assert (out_dir / "predictions.json").exists() and (out_dir / "PR_curve.png").exists()
    rc = main(["val", "--weights", str(tmp_path / "missing.onnx"), "--data", str(tiny_data)])
    assert rc == 2
    assert "missing.onnx" in capsys.readouterr().err


# ------------------------------------------------------------------------------ acceptance
@pytest.mark.real_data
def test_yolov3_tiny_darknet_weights_coco128_map(shared_dir, tmp_path):
    """Official Darknet YOLOv3-tiny on coco128 val2017 vs the independent OpenCV reference
    (mAP@0.5 = 0.292, mAP@0.5:0.95 = 0.168): 416 square letterbox, conf 0.001, class-aware NMS at
    IoU 0.45, 300 detections per image. Runs the `sparseyolo val` code path (~30 s on one core)."""
    from sparseyolo.runtime.val import run

    names = (shared_dir / "darknet-cfg" / "coco.names").read_text().split("\n")[:80]
    images = shared_dir / "data" / "coco128" / "images" / "val2017"
    data = tmp_path / "coco128.yaml"
    data.write_text(yaml.safe_dump({"train": str(images), "val": str(images), "names": names}))
    metrics, maps, save_dir = run(
        shared_dir / "weights" / "yolov3-tiny.weights",
        data,
        img_size=416,
        batch_size=32,
        conf_thres=0.001,
        iou_thres=0.45,
        max_det=300,
        cfg="yolov3-tiny",
        rect=False,
        workers=0,
        plots=False,
        save_json=True,
        project=tmp_path / "runs",
        name="exp",
    )
    print({k: round(metrics[k], 4) for k in ("mAP50", "mAP50-95", "coco/mAP50", "coco/mAP50-95")})
    assert abs(metrics["mAP50"] - 0.292) < 0.015
    assert abs(metrics["mAP50-95"] - 0.168) < 0.012
    # our matcher and faster-coco-eval agree on the same detections
    assert abs(metrics["coco/mAP50"] - metrics["mAP50"]) < 1e-3
    assert abs(metrics["coco/mAP50-95"] - metrics["mAP50-95"]) < 1e-3
    recs = json.loads((save_dir / "predictions.json").read_text())
    assert {r["image_id"] for r in recs} <= {int(p.stem) for p in images.glob("*.jpg")}
    assert max(r["category_id"] for r in recs) <= 90 and 12 not in {r["category_id"] for r in recs}


@pytest.mark.slow
@pytest.mark.real_data
def test_yolov3_tiny_onnx_matches_pytorch_map(shared_dir, tmp_path):
    """The same weights exported with raw head outputs give the same mAP through ONNX Runtime."""
    from sparseyolo.data.dataset import create_dataloader
    from sparseyolo.models import load_model

    model, _ = load_model(shared_dir / "weights" / "yolov3-tiny.weights", cfg="yolov3-tiny")
    model.eval()
    model.export_raw = True
    path = _export(model, tmp_path / "tiny.onnx", torch.zeros(1, 3, 416, 416), _meta(model), 2)
    model.export_raw = False
    images = shared_dir / "data" / "coco128" / "images" / "val2017"
    loader = create_dataloader(str(images), 416, 32, 32, workers=0)[0]
    m_pt, _ = validate(model, loader, iou_thres=0.45)
    m_onnx, _ = validate(load_backend(path), loader, iou_thres=0.45)
    assert abs(m_pt["mAP50"] - m_onnx["mAP50"]) < 2e-3
    assert abs(m_pt["mAP50-95"] - m_onnx["mAP50-95"]) < 2e-3


def test_backends_on_sparseyolo_exports(tiny_model, tmp_path):
    """`sparseyolo export` output: raw heads decode like PyTorch; an NMS-included graph is only filtered."""
    from sparseyolo.exporters import export_onnx
    from sparseyolo.runtime.backends import postprocess

    imgs = torch.randint(0, 255, (2, 3, 128, 128), dtype=torch.uint8)
    torch_be = TorchBackend(tiny_model)
    ref = torch_be(imgs)
    raw = load_backend(export_onnx(tiny_model, tmp_path / "raw.onnx", img_size=(128, 128), dynamic=True))
    assert not raw.end2end and raw.names == NAMES
    torch.testing.assert_close(raw(imgs), ref, rtol=1e-3, atol=1e-4)
    e2e = load_backend(
        export_onnx(
            tiny_model,
            tmp_path / "nms.onnx",
            img_size=(128, 128),
            include_nms=True,
            max_det=50,
            conf_thres=0.001,
            iou_thres=0.45,
        )
    )
    assert e2e.end2end and e2e.fixed_shape == (128, 128)
    got = postprocess(e2e, e2e(imgs), 0.001, 0.45, max_det=20)
    want = postprocess(torch_be, ref, 0.001, 0.45, max_det=20)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape == (20, 6)
        torch.testing.assert_close(g[0], w[0], rtol=1e-3, atol=1e-3)
        assert torch.all(g[:-1, 4] >= g[1:, 4])
    only_b = postprocess(e2e, e2e(imgs), 0.001, 0.45, classes=[1], max_det=20)
    assert all(set(d[:, 5].tolist()) <= {1.0} for d in only_b)

"""`sparseyolo detect`: boxes land back on the original image, outputs are written, bad files skipped."""

import json

import cv2
import numpy as np
import pytest
import torch

from sparseyolo.runtime.backends import Backend
from sparseyolo.runtime.predict import list_sources, run
from sparseyolo.utils.errors import SparseYoloError

# (h, w) of the image, red box x1, y1, x2, y2 in original pixels
CASES = [((240, 400), (50, 60, 150, 200)), ((500, 180), (20, 300, 170, 480)), ((100, 100), (10, 10, 40, 90))]


class RedBoxBackend(Backend):
    """Finds the pure-red region of the letterboxed input: a detector whose answer we know."""

    kind = "red"

    def __init__(self):
        self.names = ["red", "other"]
        self.stride = 32

    def preprocess(self, imgs):
        return imgs

    def forward(self, x):
        bs = x.shape[0]
        pred = torch.zeros(bs, 2, 7)
        for i in range(bs):
            r, g, b = x[i].int()
            ys, xs = torch.nonzero((r > 200) & (g < 60) & (b < 60), as_tuple=True)
            x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
            pred[i, 0] = torch.tensor([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, 1.0, 0.9, 0.05])
            pred[i, 1] = torch.tensor([10, 10, 8, 8, 0.5, 0.1, 0.8])  # a second, class-1 box
        return pred


@pytest.fixture()
def images(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    for k, ((h, w), (x1, y1, x2, y2)) in enumerate(CASES):
        img = np.full((h, w, 3), 255, np.uint8)
        img[y1:y2, x1:x2] = (0, 0, 255)  # BGR red
        cv2.imwrite(str(d / f"{k + 1}.png"), img)
    (d / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (d / "notes.txt").write_text("ignored")
    return d


def test_detect_boxes_back_in_original_pixels(images, tmp_path, caplog):
    save_dir, results = run(
        RedBoxBackend(),
        images,
        img_size=128,
        conf_thres=0.25,
        save_txt=True,
        save_conf=True,
        save_json=True,
        project=tmp_path / "runs",
        name="exp",
    )
    assert save_dir == tmp_path / "runs" / "exp"
    assert [r.path.name for r in results] == ["1.png", "2.png", "3.png"]  # broken.jpg skipped
    assert "broken.jpg" in caplog.text
    for r, ((h, w), box) in zip(results, CASES, strict=True):
        assert r.shape == (h, w)
        red = r.det[r.det[:, 5] == 0]
        assert len(red) == 1
        # one letterboxed pixel is up to max(h, w) / 128 original pixels
        tol = max(h, w) / 128 * 1.5
        np.testing.assert_allclose(red[0, :4].numpy(), box, atol=tol)
        assert (save_dir / r.path.name).exists()
    recs = json.loads((save_dir / "predictions.json").read_text())
    assert {r["image_id"] for r in recs} == {1, 2, 3} and {r["category_id"] for r in recs} == {0, 1}
    txt = np.loadtxt(save_dir / "labels" / "2.txt", ndmin=2)
    red = txt[txt[:, 0] == 0][0]
    np.testing.assert_allclose(red[1:5], [95 / 180, 390 / 500, 150 / 180, 180 / 500], atol=0.02)
    assert red[5] == pytest.approx(0.9, abs=1e-4)
    # the annotated image has the class colour drawn on the box edge
    out = cv2.imread(str(save_dir / "1.png"))
    from sparseyolo.evaluation.plots import class_color

    assert np.abs(out[130, 49].astype(int) - class_color(0)).max() < 40  # box line drawn on the left edge
    assert (out[130, 20] == 255).all() and (out[130, 100] == (0, 0, 255)).all()  # outline only, nothing else


def test_detect_filters_and_nosave(images, tmp_path):
    save_dir, results = run(
        RedBoxBackend(), images / "*.png", img_size=96, classes=[1], nosave=True, project=tmp_path / "runs", name="exp"
    )
    assert all(set(r.det[:, 5].tolist()) == {1.0} for r in results)
    assert not list(save_dir.glob("*.png"))
    _, results = run(
        RedBoxBackend(),
        images / "1.png",
        img_size=96,
        conf_thres=0.6,
        nosave=True,
        project=tmp_path / "runs",
        name="exp",
    )
    assert len(results) == 1 and results[0].det[:, 5].tolist() == [0.0]


def test_list_sources_errors(tmp_path):
    with pytest.raises(SparseYoloError, match="no such file"):
        list_sources(tmp_path / "nope")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(SparseYoloError, match="no images"):
        list_sources(tmp_path)


def test_cli_detect_onnx(images, tmp_path):
    import onnx

    from sparseyolo.cli.main import main
    from sparseyolo.models import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolov3-tiny", nc=2, width_multiple=0.125, names=["red", "other"]).eval()
    model.export_raw = True
    path = tmp_path / "m.onnx"
    torch.onnx.export(
        model,
        torch.zeros(1, 3, 96, 96),
        str(path),
        input_names=["images"],
        dynamic_axes={"images": {0: "b", 2: "h", 3: "w"}},
        opset_version=13,
        dynamo=False,
    )
    m = onnx.load(str(path))
    for k, v in {
        "names": json.dumps(model.names),
        "stride": json.dumps(model.stride.tolist()),
        "anchors": json.dumps(model.detect.anchors.tolist()),
        "decode": '"v5"',
    }.items():
        p = m.metadata_props.add()
        p.key, p.value = k, v
    onnx.save(m, str(path))
    rc = main(
        [
            "detect",
            "--weights",
            str(path),
            "--source",
            str(images),
            "--img",
            "96",
            "--conf",
            "0.001",
            "--save-txt",
            "--project",
            str(tmp_path / "runs"),
            "--name",
            "exp",
            "--max-det",
            "5",
        ]
    )
    assert rc == 0
    out = tmp_path / "runs" / "exp"
    assert sorted(p.name for p in out.glob("*.png")) == ["1.png", "2.png", "3.png"]
    assert len((out / "labels" / "1.txt").read_text().splitlines()) == 5

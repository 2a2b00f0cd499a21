"""Augmentations: boxes stay valid and belong to the combined images; letterbox inverts exactly."""

import random
from collections import Counter

import numpy as np
import pytest
import torch
from voc_fixture import make_yolo_folder

from sparseyolo.data.augment import augment_hsv, box_candidates, letterbox, random_flips, random_perspective
from sparseyolo.data.dataset import YoloDataset
from sparseyolo.utils.boxes import scale_boxes, xywhn2xyxy

STRONG = {
    "hsv_h": 0.1,
    "hsv_s": 0.9,
    "hsv_v": 0.9,
    "degrees": 30.0,
    "translate": 0.3,
    "scale": 0.8,
    "shear": 10.0,
    "perspective": 0.001,
    "flipud": 0.5,
    "fliplr": 0.5,
    "mosaic": 1.0,
    "mixup": 0.5,
}


@pytest.fixture(scope="module")
def train_images(tmp_path_factory):
    """16 generated images of varied sizes whose class id is the image's index: every box names its
    source image, so a box from anywhere else is caught."""
    root = tmp_path_factory.mktemp("augment")
    img_dir = make_yolo_folder(root, "train", n=16, min_objects=3, max_objects=6)
    for i, lb in enumerate(sorted((root / "labels/train").glob("*.txt"))):
        rows = [ln.split() for ln in lb.read_text().splitlines()]
        lb.write_text("".join(" ".join([str(i), *r[1:]]) + "\n" for r in rows))
    return img_dir


@pytest.fixture(scope="module")
def val_images(tmp_path_factory):
    """16 generated images, landscape, portrait and square (as coco128 val2017 mixes them)."""
    return make_yolo_folder(tmp_path_factory.mktemp("letterbox"), "val", n=16, seed=1)


class Recorder:
    """Wraps ``load_image`` to learn which source images a sample was built from."""

    def __init__(self, ds):
        self.ds, self.seen, self.inner = ds, [], ds.load_image
        ds.load_image = self

    def __call__(self, i):
        self.seen.append(i)
        return self.inner(i)


@pytest.mark.parametrize("hyp", [STRONG, {**STRONG, "mosaic": 0.0}], ids=["mosaic+mixup", "single"])
def test_augmented_boxes_valid_and_from_source_images(train_images, hyp):
    random.seed(0)
    np.random.seed(0)
    ds = YoloDataset(train_images, img_size=160, augment=True, hyp=hyp)
    rec = Recorder(ds)
    n_boxes = n_mixed = 0
    for k in range(150):
        rec.seen = []
        img, labels, path, shapes = ds[k % len(ds)]
        assert img.shape == (3, 160, 160) and img.dtype == torch.uint8
        assert labels.shape[1] == 6 and (labels[:, 0] == 0).all()
        xyxy = xywhn2xyxy(labels[:, 2:].clone(), 160, 160)
        assert (xyxy >= -1e-4).all() and (xyxy <= 160 + 1e-4).all(), "box outside the image"
        assert (labels[:, 4] > 0).all() and (labels[:, 5] > 0).all(), "box without area"
        available = Counter()
        for i in rec.seen:
            available.update(int(c) for c in ds.labels[i][:, 0])
        got = Counter(int(c) for c in labels[:, 1])
        assert not got - available, f"classes {got - available} not in the combined images {rec.seen}"
        n_boxes += len(labels)
        n_mixed += len(rec.seen) == 8
        if hyp["mosaic"] == 0:
            assert rec.seen == [k % len(ds)] and shapes is not None
    assert n_boxes > 300  # the checks above ran on many boxes
    if hyp["mosaic"]:
        assert 40 < n_mixed < 110  # mixup probability 0.5


@pytest.mark.parametrize("rect", [False, True])
def test_letterbox_inverse_with_scale_boxes(val_images, rect):
    ds = YoloDataset(val_images, img_size=224, batch_size=8, rect=rect)
    assert len({tuple(s) for s in ds.shapes}) > 8  # many sizes and aspect ratios
    for i in range(len(ds)):
        img, labels, path, ((h0, w0), ratio_pad) = ds[i]
        if not len(labels):
            continue
        h, w = img.shape[1:]
        boxes = xywhn2xyxy(labels[:, 2:].double(), w, h)
        back = scale_boxes((h, w), boxes, (h0, w0), ratio_pad)
        original = xywhn2xyxy(torch.from_numpy(ds.labels[i][:, 1:]).double(), w0, h0)
        # exact up to the rounding of the resized size: at most one letterboxed pixel, in original pixels
        tol = 1.0 / min(ratio_pad[0]) + 1e-6
        assert torch.allclose(back, original, atol=tol), (path, (back - original).abs().max())


def test_letterbox_shapes_and_padding():
    img = np.zeros((300, 400, 3), np.uint8)
    out, ratio, (pw, ph) = letterbox(img, 320)
    assert out.shape == (320, 320, 3) and ratio == (0.8, 0.8) and (pw, ph) == (0.0, 40.0)
    assert (out[:40] == 114).all() and (out[40:280] == 0).all() and (out[280:] == 114).all()
    out, ratio, (pw, ph) = letterbox(img, 640, scaleup=False, auto=True, stride=32)
    assert ratio == (1.0, 1.0) and out.shape == (320, 416, 3) and (pw, ph) == (8.0, 10.0)


def test_random_perspective_identity_and_candidates():
    img = np.random.randint(0, 255, (64, 96, 3), np.uint8)
    t = np.array([[3, 10, 12, 40, 50]], np.float32)
    out, t2 = random_perspective(img, t, degrees=0, translate=0, scale=0, shear=0, perspective=0)
    assert np.array_equal(out, img) and np.allclose(t2, t)
    before = np.array([[0, 0, 10, 10], [0, 0, 50, 50], [0, 0, 50, 50], [0, 0, 30, 30]], np.float32).T
    after = np.array([[0, 0, 1.5, 10], [0, 0, 50, 2.4], [0, 0, 15, 15], [0, 0, 30, 29]], np.float32).T
    # too narrow, too flat, lost 91% of its area, fine
    assert box_candidates(before, after).tolist() == [False, False, False, True]
    thin = np.array([[0, 0, 100, 4]], np.float32).T
    assert box_candidates(thin, thin).tolist() == [False]  # aspect ratio 25 > 20


def test_flips_move_boxes_with_pixels():
    img = np.zeros((40, 60, 3), np.uint8)
    img[5:15, 10:30] = 255  # box x 10..30, y 5..15
    lb = np.array([[1, 20 / 60, 10 / 40, 20 / 60, 10 / 40]], np.float32)
    out, lb2 = random_flips(img.copy(), lb.copy(), flipud=1.0, fliplr=1.0)
    ys, xs = np.nonzero(out[..., 0])
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (30, 50, 25, 35)
    assert np.allclose(lb2[0, 1:], [40 / 60, 30 / 40, 20 / 60, 10 / 40])


def test_augment_hsv_changes_colour_only():
    img = np.random.randint(0, 255, (32, 32, 3), np.uint8)
    same = augment_hsv(img.copy(), 0, 0, 0)
    assert np.array_equal(same, img)
    np.random.seed(1)
    out = augment_hsv(img.copy(), 0.5, 0.5, 0.5)
    assert out.shape == img.shape and out.dtype == np.uint8 and not np.array_equal(out, img)

"""The YOLO loss: anchor assignment by hand, gain scaling, and learning on a generated shapes image."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from sparseyolo.engine.hyp import load_hyp
from sparseyolo.engine.loss import YoloLoss, gather_cells, level_balance, objectness_target, scaled_gains
from sparseyolo.models import Detect, DetectionModel


class OneLevel(nn.Module):
    """A bare Detect head on an 8x8 grid (stride 8, image 64) with two anchors."""

    def __init__(self, decode: str = "v5"):
        super().__init__()
        det = Detect(nc=2, anchors=[[10, 13, 30, 30]], ch=(4,))
        det.stride.fill_(8.0)
        det.decode = decode
        self.model = nn.Sequential(det)

    def forward(self, x):
        return self.model(x)


def _assign(decode: str, anchor_t: float, iou_t: float = 0.2):
    model = OneLevel(decode).train()
    hyp = load_hyp("scratch") | {"anchor_t": anchor_t, "iou_t": iou_t}
    loss = YoloLoss(model, hyp, img_size=64)
    preds = model([torch.zeros(1, 4, 8, 8)])
    # one 0.2 x 0.2 box centred at (0.3, 0.6): grid centre (2.4, 4.8), size 1.6 x 1.6 cells
    targets = torch.tensor([[0, 1, 0.3, 0.6, 0.2, 0.2]])
    tcls, tbox, indices, anch = loss.build_targets(preds, targets)
    b, a, gj, gi = indices[0]
    cells = sorted(zip(a.tolist(), gi.tolist(), gj.tolist(), strict=False))
    return cells, tbox[0], anch[0], tcls[0]


def test_anchor_ratio_rule_and_neighbour_cells():
    # anchor 0 = (1.25, 1.625) cells: ratio max 1.28; anchor 1 = (3.75, 3.75): ratio 2.34
    cells, tbox, anch, tcls = _assign("v5", anchor_t=2.0)
    # centre cell (2, 4); x fraction 0.4 < 0.5 -> left neighbour (1, 4); y fraction 0.8 -> cell below (2, 5)
    assert cells == [(0, 1, 4), (0, 2, 4), (0, 2, 5)]
    assert tcls.tolist() == [1, 1, 1]
    rows = {(round(float(x), 4), round(float(y), 4)) for x, y in tbox[:, :2]}
    assert rows == {(0.4, 0.8), (1.4, 0.8), (0.4, -0.2)}  # centre relative to each assigned cell
    assert torch.allclose(tbox[:, 2:], torch.full((3, 2), 1.6))
    assert torch.allclose(anch, torch.tensor([1.25, 1.625]).expand(3, 2))

    cells, *_ = _assign("v5", anchor_t=3.0)  # both anchors pass, each with 3 cells
    assert len(cells) == 6 and {c[0] for c in cells} == {0, 1}
    cells, *_ = _assign("v5", anchor_t=1.2)  # neither passes
    assert cells == []


def test_darknet_decode_uses_centre_cell_and_iou_t():
    # ratio rule passes both anchors (anchor_t 3); shape IoU: anchor 0 0.772, anchor 1 0.182
    cells, *_ = _assign("darknet", anchor_t=3.0, iou_t=0.2)
    assert cells == [(0, 2, 4)]
    cells, *_ = _assign("darknet", anchor_t=3.0, iou_t=0.1)
    assert cells == [(0, 2, 4), (1, 2, 4)]


def test_gain_scaling_and_balance():
    hyp = load_hyp("scratch")
    g = scaled_gains(hyp, nl=2, nc=3, img_size=320)
    assert g["box"] == pytest.approx(0.05 * 1.5)
    assert g["cls"] == pytest.approx(0.5 * 3 / 80 * 1.5)
    assert g["obj"] == pytest.approx(1.0 * 0.25 * 1.5)
    assert level_balance([8, 16, 32]) == [4.0, 1.0, 0.4]
    assert level_balance([16, 32]) == [1.0, 0.4]


@pytest.fixture(scope="module")
def shapes_image(tmp_path_factory):
    """The built-in shapes dataset at 128 px: the image with the most objects and its labels."""
    from sparseyolo.data.synthetic import make_shapes_dataset

    root = tmp_path_factory.mktemp("loss")
    make_shapes_dataset(root, n_train=6, n_val=0, img_size=128, max_objects=5)
    labels = {p: np.loadtxt(p, ndmin=2) for p in sorted((root / "labels/train").glob("*.txt"))}
    lbl_path = max(labels, key=lambda p: len(labels[p]))
    img = cv2.imread(str(root / "images/train" / f"{lbl_path.stem}.jpg"))[:, :, ::-1]
    return img, labels[lbl_path]


def _image_and_targets(img: np.ndarray, labels: np.ndarray, size: int):
    img = cv2.resize(np.ascontiguousarray(img), (size, size))  # stretch: normalised labels stay valid
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255
    targets = torch.cat((torch.zeros(len(labels), 1), torch.from_numpy(labels).float()), 1)
    return x, targets


@pytest.mark.parametrize("decode", ["v5", "darknet"])
def test_loss_decreases_on_an_image(shapes_image, decode):
    torch.manual_seed(0)
    x, targets = _image_and_targets(*shapes_image, 128)
    assert len(targets) >= 3
    model = DetectionModel("yolov3-tiny", nc=80, width_multiple=0.25).train()
    model.decode = decode
    loss_fn = YoloLoss(model, load_hyp("scratch"), img_size=128)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(15):
        loss, items = loss_fn(model(x), targets)
        assert torch.isfinite(loss) and items.shape == (3,)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.75 * losses[0], losses
    assert all(b < a * 1.05 for a, b in zip(losses, losses[1:], strict=False))  # steady, not noisy


def test_focal_and_label_smoothing_change_loss():
    torch.manual_seed(0)
    model = OneLevel().train()
    preds = [p.detach() + torch.randn_like(p) for p in model([torch.randn(2, 4, 8, 8)])]
    targets = torch.tensor([[0, 1, 0.3, 0.6, 0.2, 0.2], [1, 0, 0.7, 0.2, 0.3, 0.4]])
    hyp = load_hyp("scratch")
    base = YoloLoss(model, hyp, 64)(preds, targets)[1]
    focal = YoloLoss(model, hyp | {"fl_gamma": 1.5}, 64)(preds, targets)[1]
    smooth = YoloLoss(model, hyp, 64, label_smoothing=0.1)(preds, targets)[1]
    assert focal[1] < base[1] and focal[2] < base[2]  # focal down-weights easy examples
    assert smooth[2] != base[2] and smooth[0] == base[0]
    # a single match (darknet decode, centre cell only) must work too
    one = OneLevel("darknet").train()
    single = YoloLoss(one, hyp, 64)(one([torch.randn(1, 4, 8, 8)]), targets[:1])[1]
    assert torch.isfinite(single).all() and single[0] > 0
    # no targets: only objectness contributes
    empty = YoloLoss(model, hyp, 64)(preds, torch.zeros(0, 6))[1]
    assert empty[0] == 0 and empty[2] == 0 and empty[1] > 0


def test_objectness_target_takes_the_best_score_of_shared_cells_whatever_the_write_order():
    """Many targets on few (anchor, cell)s: each cell gets its largest score, the same on every call.
    A sort then ``tobj[index] = score`` (what this replaced) gave another winner on most calls at this
    size, because ``index_put_`` writes in parallel on CPU; that broke exact resume in QAT runs."""
    g = torch.Generator().manual_seed(0)
    n, shape = 40_000, (16, 3, 26, 26)
    index = tuple(torch.randint(0, size, (n,), generator=g) for size in shape)
    score = torch.rand(n, generator=g)
    best: dict[tuple, float] = {}
    for *cell, s in zip(*(t.tolist() for t in index), score.tolist(), strict=True):
        best[tuple(cell)] = max(best.get(tuple(cell), 0.0), s)
    expected = torch.zeros(shape)
    expected[tuple(torch.tensor(list(best)).T)] = torch.tensor(list(best.values()))
    for _ in range(10):
        assert torch.equal(objectness_target(torch.Size(shape), index, score), expected)
    assert torch.equal(objectness_target(torch.Size(shape), tuple(t[:0] for t in index), score[:0]), torch.zeros(shape))


def test_gather_cells_adds_the_gradients_of_shared_cells_in_index_order():
    """Many targets on few (image, anchor, cell)s, gradients of very different sizes, so the order of
    the additions shows in the float32 result. The gradient must equal a sequential sum in index
    order (numpy's unbuffered ``add.at``) on every call. Advanced indexing (what this replaced) adds
    them in parallel on CPU and matched on none of ten calls here; across processes its order
    changed the weights of a resumed BCCD run."""
    g = torch.Generator().manual_seed(0)
    n, shape = 40_000, (16, 3, 26, 26)
    index = tuple(torch.randint(0, size, (n,), generator=g) for size in shape)
    upstream = torch.randn(n, 8, generator=g) * 10.0 ** torch.randint(-4, 5, (n, 1), generator=g)
    linear = np.ravel_multi_index(tuple(t.numpy() for t in index), shape)
    expected = np.zeros((int(np.prod(shape)), 8), np.float32)
    np.add.at(expected, linear, upstream.numpy())
    reversed_order = np.zeros_like(expected)
    np.add.at(reversed_order, linear[::-1], upstream.numpy()[::-1])
    assert not np.array_equal(reversed_order, expected)  # the data is order-sensitive
    for _ in range(5):
        pred = torch.randn(*shape, 8, generator=g).requires_grad_()
        rows = gather_cells(pred, index)
        assert torch.equal(rows, pred[index])
        rows.backward(upstream)
        assert torch.equal(pred.grad.reshape(-1, 8), torch.from_numpy(expected))

"""Property-based tests of the box conversions, pairwise IoU and class-aware NMS."""

from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseyolo.utils.boxes import box_iou, xywh2xyxy, xywhn2xyxy, xyxy2xywh, xyxy2xywhn
from sparseyolo.utils.nms import non_max_suppression

# no example database: the tests write nothing outside tmp_path
FAST = settings(max_examples=80, deadline=None, database=None)
NMS = settings(max_examples=60, deadline=None, database=None)


coord = st.floats(-2000, 2000, allow_nan=False, allow_infinity=False)
size = st.floats(0, 1000, allow_nan=False, allow_infinity=False)
xywh_rows = st.lists(st.tuples(coord, coord, size, size), min_size=1, max_size=20)
unit = st.floats(0, 1, allow_nan=False)
xywhn_rows = st.lists(st.tuples(unit, unit, unit, unit), min_size=1, max_size=20)
backends = st.sampled_from(["numpy", "torch"])


def as_array(rows, backend, dtype=np.float64):
    a = np.asarray(rows, dtype=dtype).reshape(-1, 4)
    return torch.from_numpy(a) if backend == "torch" else a


def to_np(x):
    return x.numpy() if isinstance(x, torch.Tensor) else x


# -- conversions -----------------------------------------------------------------------------------


@FAST
@given(xywh_rows, backends)
def test_xywh_xyxy_round_trip(rows, backend):
    x = as_array(rows, backend)
    before = to_np(x).copy()
    xyxy = xywh2xyxy(x)
    assert type(xyxy) is type(x) and xyxy.shape == x.shape
    assert np.array_equal(to_np(x), before)  # inputs are not modified
    b = to_np(xyxy)
    assert np.all(b[:, 2] >= b[:, 0]) and np.all(b[:, 3] >= b[:, 1])
    np.testing.assert_allclose(to_np(xyxy2xywh(xyxy)), before, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(to_np(xywh2xyxy(xyxy2xywh(xyxy))), b, rtol=1e-12, atol=1e-9)


@FAST
@given(xywh_rows)
def test_conversions_numpy_torch_float32_agree(rows):
    a = np.asarray(rows, dtype=np.float32)
    t = torch.from_numpy(a.copy())
    np.testing.assert_allclose(xywh2xyxy(t).numpy(), xywh2xyxy(a), rtol=1e-6, atol=1e-3)
    np.testing.assert_allclose(xyxy2xywh(xywh2xyxy(t)).numpy(), a, rtol=1e-5, atol=1e-3)


@FAST
@given(xywhn_rows, st.integers(1, 4096), st.integers(1, 4096), st.floats(-100, 100), st.floats(-100, 100), backends)
def test_normalised_round_trip_and_padding(rows, w, h, padw, padh, backend):
    x = as_array(rows, backend)
    before = to_np(x).copy()
    px = xywhn2xyxy(x, w, h)
    np.testing.assert_allclose(to_np(xyxy2xywhn(px, w, h)), before, rtol=1e-12, atol=1e-12)
    # the normalised pair is the pixel pair after scaling by the image size
    scale = np.array([w, h, w, h], dtype=np.float64)
    np.testing.assert_allclose(to_np(px), to_np(xywh2xyxy(as_array(before * scale, backend))), rtol=1e-12, atol=1e-9)
    # a letterbox pad is a plain offset
    padded = to_np(xywhn2xyxy(x, w, h, padw, padh))
    np.testing.assert_allclose(padded, to_np(px) + np.array([padw, padh, padw, padh]), rtol=1e-12, atol=1e-9)
    assert np.array_equal(to_np(x), before)


@FAST
@given(xywh_rows, st.integers(1, 2048), st.integers(1, 2048), backends)
def test_xyxy2xywhn_clip_stays_in_image_and_keeps_input(rows, w, h, backend):
    x = xywh2xyxy(as_array(rows, backend))
    before = to_np(x).copy()
    y = to_np(xyxy2xywhn(x, w, h, clip=True))
    assert np.array_equal(to_np(x), before)  # clipping works on a copy
    assert np.all((y[:, :2] >= 0) & (y[:, :2] <= 1))
    assert np.all((y[:, 2:] >= 0) & (y[:, 2:] <= 1))
    inside = (before[:, 0] >= 0) & (before[:, 1] >= 0) & (before[:, 2] <= w) & (before[:, 3] <= h)
    np.testing.assert_allclose(y[inside], to_np(xyxy2xywhn(x, w, h))[inside], rtol=1e-12, atol=1e-12)


# -- pairwise IoU ----------------------------------------------------------------------------------


def boxes_of(rows, dtype=torch.float64):
    return xywh2xyxy(torch.tensor(rows, dtype=dtype).reshape(-1, 4))


@FAST
@given(xywh_rows, xywh_rows, st.sampled_from([torch.float32, torch.float64]))
def test_box_iou_symmetric_and_bounded(r1, r2, dtype):
    a, b = boxes_of(r1, dtype), boxes_of(r2, dtype)
    iou = box_iou(a, b)
    assert iou.shape == (len(a), len(b))
    assert torch.equal(iou, box_iou(b, a).T)
    assert bool(torch.isfinite(iou).all())
    assert bool(((iou >= 0) & (iou <= 1)).all()), iou.max()


@FAST
@given(
    st.lists(st.tuples(coord, coord, st.floats(0.5, 1000), st.floats(0.5, 1000)), min_size=1, max_size=20),
    st.sampled_from([torch.float32, torch.float64]),
)
def test_box_iou_is_one_on_the_diagonal(rows, dtype):
    a = boxes_of(rows, dtype)
    assert (a[:, 2] - a[:, 0] > 0).all() and (a[:, 3] - a[:, 1] > 0).all()
    iou = box_iou(a, a)
    torch.testing.assert_close(iou.diagonal(), torch.ones(len(a), dtype=dtype), rtol=0, atol=1e-5)
    assert bool((iou <= 1).all())


# -- NMS -------------------------------------------------------------------------------------------


@st.composite
def predictions(draw):
    """(bs, N, 5 + nc): xywh on a quarter-pixel grid, objectness and class probabilities."""
    bs, n, nc = draw(st.integers(1, 3)), draw(st.integers(0, 40)), draw(st.integers(1, 4))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    cxcy = (torch.rand(bs, n, 2, generator=g) * 640 * 4).round() / 4
    wh = (torch.rand(bs, n, 2, generator=g) * draw(st.sampled_from([20.0, 100.0, 400.0])) + 1).round()
    probs = torch.rand(bs, n, 1 + nc, generator=g)
    if draw(st.booleans()):  # ties in the scores
        probs = (probs * 4).round() / 4
    pred = torch.cat((cxcy, wh, probs), 2)
    if n > 1 and draw(st.booleans()):  # exact duplicate and half-shifted boxes
        pred[:, n // 2] = pred[:, 0]
        pred[:, 1, :2] = pred[:, 0, :2] + pred[:, 0, 2:4] / 4
    return pred


def candidates(x, conf, multi_label, classes):
    """Every (x1, y1, x2, y2, score, cls) row NMS may return for one image, computed independently."""
    nc = x.shape[1] - 5
    rows = []
    box = xywh2xyxy(x[:, :4])
    scores = x[:, 5:] * x[:, 4:5]
    for i in range(len(x)):
        if not x[i, 4] > conf:
            continue
        cls = (
            [c for c in range(nc) if scores[i, c] > conf]
            if multi_label and nc > 1
            else [int(scores[i].argmax())]
            if scores[i].max() > conf
            else []
        )
        for c in cls:
            if classes is None or c in classes:
                rows.append(torch.cat((box[i], scores[i, c : c + 1], torch.tensor([float(c)]))))
    return torch.stack(rows) if rows else torch.zeros(0, 6)


def iou64(a, b):
    return box_iou(a[:, :4].double(), b[:, :4].double(), eps=0.0)


@NMS
@given(
    predictions(),
    st.floats(0, 0.9),
    st.floats(0, 1),
    st.integers(1, 50),
    st.booleans(),
    st.booleans(),
    st.sampled_from([None, [0], [1, 2], [0, 3]]),
)
def test_nms_keeps_a_suppressed_sorted_subset(pred, conf, iou_thres, max_det, multi_label, agnostic, classes):
    before = pred.clone()
    out = non_max_suppression(
        pred,
        conf,
        iou_thres,
        classes=classes,
        agnostic=agnostic,
        max_det=max_det,
        multi_label=multi_label,
    )
    assert torch.equal(pred, before)
    assert isinstance(out, list) and len(out) == pred.shape[0]
    for x, det in zip(pred, out, strict=False):
        assert det.shape[1] == 6 and det.dtype == pred.dtype and len(det) <= max_det
        cand = candidates(x, conf, multi_label, classes)
        # a sub-multiset of the candidate rows: same coordinates, score and class, nothing invented
        have = Counter(tuple(r) for r in cand.tolist())
        got = Counter(tuple(r) for r in det.tolist())
        assert not got - have, f"rows not in the input: {got - have}"
        if len(det) == 0:
            assert len(cand) == 0 or max_det < 1
            continue
        assert bool((det[:, 4] > conf).all())
        assert bool((det[:-1, 4] >= det[1:, 4]).all()), "not sorted by score"
        if classes is not None:
            assert set(det[:, 5].long().tolist()) <= set(classes)
        same = det[:, 5:6] == det[:, 5:6].T if not agnostic else torch.ones(len(det), len(det), dtype=torch.bool)
        iou = iou64(det, det)
        iou.fill_diagonal_(0)
        assert float(iou[same].max()) <= iou_thres + 1e-5, "two kept boxes overlap above iou_thres"
        # greedy maximality: every dropped candidate overlaps a kept, no-lower-scored box
        if len(det) < max_det:
            dropped = [torch.tensor(r, dtype=pred.dtype) for r, k in (have - got).items() for _ in range(k)]
            for r in dropped:
                ov = iou64(r[None], det)[0]
                ok = (ov > iou_thres - 1e-5) & (det[:, 4] >= r[4])
                if not agnostic:
                    ok &= det[:, 5] == r[5]
                assert bool(ok.any()), f"candidate {r.tolist()} dropped without a suppressor"


@NMS
@given(predictions(), st.floats(0, 0.9))
def test_nms_iou_one_keeps_every_best_class_candidate(pred, conf):
    """At iou_thres=1 nothing suppresses anything: the output is all candidates, sorted."""
    out = non_max_suppression(pred, conf, 1.0, max_det=10_000)
    for x, det in zip(pred, out, strict=False):
        cand = candidates(x, conf, False, None)
        assert len(det) == len(cand)
        assert Counter(tuple(r) for r in det.tolist()) == Counter(tuple(r) for r in cand.tolist())


@pytest.mark.parametrize("bad", [(-0.1, 0.5), (1.1, 0.5), (0.5, -0.1), (0.5, 1.5)])
def test_nms_rejects_thresholds_outside_unit_interval(bad):
    with pytest.raises(ValueError):
        non_max_suppression(torch.zeros(1, 3, 7), *bad)

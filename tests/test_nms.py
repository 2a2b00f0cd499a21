"""NMS against a brute-force Python reference on random boxes."""

import pytest
import torch

from sparseyolo.utils.nms import MAX_WH, nms_kernel, non_max_suppression


def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def reference_nms(rows, iou_thres, agnostic=False, max_det=300):
    """rows: list of (x1, y1, x2, y2, score, cls); plain greedy NMS, class by class unless agnostic."""
    rows = sorted(rows, key=lambda r: -r[4])
    kept = []
    for r in rows:
        if all(_iou(r, k) <= iou_thres for k in kept if agnostic or k[5] == r[5]):
            kept.append(r)
    return kept[:max_det]


def random_pred(bs=2, n=300, nc=4, seed=0, size=320.0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(bs, n, 2, generator=g) * size
    # clustered boxes so that plenty of them overlap
    wh = torch.rand(bs, n, 2, generator=g) * 80 + 10
    obj = torch.rand(bs, n, 1, generator=g)
    cls = torch.rand(bs, n, nc, generator=g)
    return torch.cat((xy, wh, obj, cls), 2)


def reference_from_pred(p, conf_thres, iou_thres, agnostic=False, max_det=300, classes=None, multi_label=False):
    rows = []
    for q in p.tolist():
        cx, cy, w, h, obj = q[:5]
        box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
        if obj <= conf_thres:
            continue
        scores = [obj * c for c in q[5:]]
        cands = [(s, j) for j, s in enumerate(scores)] if multi_label else [max((s, j) for j, s in enumerate(scores))]
        for s, j in cands:
            if s > conf_thres and (classes is None or j in classes):
                rows.append(box + [s, j])
    return reference_nms(rows, iou_thres, agnostic, max_det)


@pytest.mark.parametrize("agnostic", [False, True])
@pytest.mark.parametrize("iou_thres", [0.3, 0.45, 0.7])
def test_matches_reference(agnostic, iou_thres):
    pred = random_pred(seed=int(iou_thres * 100) + agnostic)
    out = non_max_suppression(pred, conf_thres=0.1, iou_thres=iou_thres, agnostic=agnostic)
    assert len(out) == 2
    for p, o in zip(pred, out, strict=False):
        ref = torch.tensor(reference_from_pred(p, 0.1, iou_thres, agnostic))
        assert o.shape == ref.shape and o.shape[0] > 10
        torch.testing.assert_close(o, ref, rtol=1e-5, atol=1e-3)
        assert torch.all(o[:-1, 4] >= o[1:, 4])  # sorted by score


def test_multi_label_classes_and_max_det():
    pred = random_pred(bs=1, n=200, nc=5, seed=3)
    out = non_max_suppression(pred, conf_thres=0.2, iou_thres=0.5, multi_label=True, classes=[1, 3], max_det=25)[0]
    ref = torch.tensor(reference_from_pred(pred[0], 0.2, 0.5, classes=[1, 3], multi_label=True, max_det=25))
    assert out.shape == (25, 6)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-3)
    assert set(out[:, 5].tolist()) <= {1.0, 3.0}


def test_class_aware_keeps_identical_boxes_of_other_classes():
    # two identical boxes, different best class -> both kept class-aware, one kept agnostic
    pred = torch.tensor([[[50, 50, 20, 20, 0.9, 0.9, 0.1], [50, 50, 20, 20, 0.8, 0.1, 0.9]]])
    assert non_max_suppression(pred, 0.25, 0.45)[0].shape[0] == 2
    agn = non_max_suppression(pred, 0.25, 0.45, agnostic=True)[0]
    assert agn.shape[0] == 1 and agn[0, 5] == 0
    torch.testing.assert_close(agn[0, :4], torch.tensor([40.0, 40, 60, 60]))


def test_empty_and_threshold_edge_cases():
    pred = random_pred(bs=3, n=50, seed=5)
    pred[1, :, 4] = 0.0  # no objects in image 1
    out = non_max_suppression(pred, 0.25, 0.45)
    assert out[1].shape == (0, 6) and out[0].shape[0] > 0
    assert non_max_suppression(torch.zeros(2, 0, 85))[0].shape == (0, 6)
    with pytest.raises(ValueError):
        non_max_suppression(pred, conf_thres=1.5)


def test_kernel_cap_and_offset():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [100, 100, 110, 110.0]])
    scores = torch.tensor([0.5, 0.9, 0.1])
    assert nms_kernel(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms_kernel(boxes, scores, 0.5, max_keep=1).tolist() == [1]
    assert MAX_WH > 4096


def test_many_boxes_capped():
    pred = random_pred(bs=1, n=12000, nc=80, seed=7, size=1000)
    out = non_max_suppression(pred, conf_thres=0.001, iou_thres=0.6, max_det=300, max_nms=10000)
    assert out[0].shape == (300, 6)


def test_no_time_limit_by_default_so_a_busy_cpu_cannot_drop_detections(monkeypatch):
    """Validation's mAP must not depend on load: only an explicit time_limit may stop NMS early."""
    import sparseyolo.utils.nms as nms

    clock = iter(range(0, 10_000, 100))  # every call to the clock: 100 s later
    monkeypatch.setattr(nms.time, "time", lambda: next(clock))
    pred = random_pred(bs=4, n=200, nc=3, seed=3, size=400)
    full = non_max_suppression(pred, conf_thres=0.01)
    assert all(len(d) for d in full)
    cut = non_max_suppression(pred, conf_thres=0.01, time_limit=1.0)
    assert len(cut[0]) == len(full[0]) and all(len(d) == 0 for d in cut[1:])

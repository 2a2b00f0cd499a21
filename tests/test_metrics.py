"""mAP machinery: unit cases and agreement with faster-coco-eval, on generated and (real_data) coco128
ground truth."""

from pathlib import Path

import numpy as np
import pytest
import torch

from sparseyolo.evaluation.coco import (
    COCO80_TO_91,
    category_ids,
    detections_to_coco,
    ground_truth_to_coco,
    image_id_from_path,
)
from sparseyolo.evaluation.metrics import ConfusionMatrix, ap_per_class, coco_ap, fitness, match_predictions


def test_match_predictions_greedy_by_score():
    labels = torch.tensor([[0, 0, 0, 10, 10], [1, 20, 20, 30, 30.0]])
    det = torch.tensor(
        [
            [0, 0, 10, 10, 0.5, 0],  # exact, but lower score than the next one
            [0, 0, 10, 8.2, 0.9, 0],  # IoU 0.82, takes the gt first where it can
            [20, 20, 30, 30, 0.8, 0],  # right box, wrong class
            [20, 20, 30, 26, 0.7, 1],  # IoU 0.6 with gt 1
        ]
    )
    tp = match_predictions(det, labels)
    assert tp.shape == (4, 10)
    # thresholds are independent: the exact box gets gt 0 where the 0.82 box is too loose
    assert tp[1].tolist() == [True] * 7 + [False] * 3
    assert tp[0].tolist() == [False] * 7 + [True] * 3
    assert not tp[2].any()
    assert tp[3].tolist() == [True, True, True] + [False] * 7  # 0.6 >= 0.5, 0.55, 0.6
    assert match_predictions(det[:0], labels).shape == (0, 10)
    assert not match_predictions(det, labels[:0]).any()


def test_coco_ap_101_points():
    # 2 gts; detections: TP, FP, TP -> recall 0.5, 0.5, 1.0; precision 1, 0.5, 0.667
    recall = np.array([0.5, 0.5, 1.0])
    precision = np.array([1.0, 0.5, 2 / 3])
    ap = coco_ap(recall, precision)
    expected = (51 * 1.0 + 50 * (2 / 3)) / 101
    assert ap == pytest.approx(expected)
    assert coco_ap(np.array([1.0]), np.array([1.0])) == 1.0


def test_ap_per_class_perfect_and_missing_class():
    tp = np.ones((3, 10), bool)
    res = ap_per_class(tp, np.array([0.9, 0.8, 0.7]), np.array([0, 0, 1]), np.array([0, 0, 1, 2]))
    assert res.classes.tolist() == [0, 1, 2]
    assert res.ap50.tolist() == [1.0, 1.0, 0.0]  # class 2 has gt but no predictions
    p, r, m50, m = res.mean_results()
    assert m50 == pytest.approx(2 / 3) and m == pytest.approx(2 / 3)
    assert r == pytest.approx(2 / 3)
    assert 0 <= res.best_conf <= 0.7


def test_confusion_matrix():
    cm = ConfusionMatrix(nc=3, conf=0.25, iou_thres=0.45)
    labels = torch.tensor([[0, 0, 0, 10, 10], [1, 20, 20, 30, 30], [2, 50, 50, 60, 60.0]])
    det = torch.tensor(
        [[0, 0, 10, 10, 0.9, 0], [20, 20, 30, 30, 0.9, 2], [80, 80, 90, 90, 0.9, 1], [50, 50, 60, 60, 0.1, 2]]
    )  # last below conf
    cm.process_batch(det, labels)
    m = cm.matrix
    assert m[0, 0] == 1 and m[2, 1] == 1 and m[1, 3] == 1 and m[3, 2] == 1
    assert m.sum() == 4
    cm.process_batch(None, labels[:1])
    assert cm.matrix[3, 0] == 1
    tp, fp = cm.tp_fp()
    assert tp.tolist() == [1, 0, 0] and fp.tolist() == [0, 1, 1]


def test_fitness():
    assert fitness({"mAP50": 0.5, "mAP50-95": 0.3}) == pytest.approx(0.32)
    assert fitness([0.1, 0.2, 0.5, 0.3]) == pytest.approx(0.32)


def test_category_ids_and_json():
    assert len(COCO80_TO_91) == 80 and COCO80_TO_91[:12] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13]
    assert COCO80_TO_91[-1] == 90
    assert category_ids(80) == COCO80_TO_91
    assert category_ids(3) == [0, 1, 2] and category_ids(3, start=1) == [1, 2, 3]
    assert category_ids(80, coco91=False)[-1] == 79
    assert image_id_from_path("a/000000000139.jpg") == 139 and image_id_from_path("x/cat.png") == "cat"
    rec = detections_to_coco("000000000139.jpg", torch.tensor([[10, 20, 40, 60, 0.5, 79]]), COCO80_TO_91)
    assert rec == [{"image_id": 139, "category_id": 90, "bbox": [10, 20, 30, 40], "score": 0.5}]


# --------------------------------------------------------------------- agreement with COCO eval
def _coco128_ground_truth(root: Path):
    import cv2

    items = []
    for img in sorted((root / "images" / "val2017").glob("*.jpg")):
        h, w = cv2.imread(str(img)).shape[:2]
        lbl = root / "labels" / "val2017" / f"{img.stem}.txt"
        a = np.loadtxt(lbl, ndmin=2) if lbl.exists() else np.zeros((0, 5))
        cls, cx, cy, bw, bh = a.T if len(a) else (np.zeros(0),) * 5
        xyxy = np.stack([cls, (cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h], 1)
        items.append((img, w, h, xyxy))
    return items


def _fake_detections(items, seed=0):
    rng = np.random.default_rng(seed)
    dets = []
    for _, w, h, gt in items:
        rows = []
        for cls, x1, y1, x2, y2 in gt:
            if rng.random() < 0.15:
                continue  # missed
            bw, bh = x2 - x1, y2 - y1
            for _ in range(rng.integers(1, 3)):  # sometimes a duplicate
                j = rng.normal(0, 0.12, 4) * [bw, bh, bw, bh]
                c = cls if rng.random() > 0.1 else rng.integers(0, 80)  # class swap
                rows.append([x1 + j[0], y1 + j[1], x2 + j[2], y2 + j[3], rng.random(), c])
        for _ in range(rng.integers(0, 6)):  # false positives
            x, y = rng.random(2) * [w, h]
            s = rng.random(2) * [w, h] * 0.3 + 4
            rows.append([x, y, x + s[0], y + s[1], rng.random() * 0.6, rng.integers(0, 80)])
        d = np.array(rows, dtype=np.float64).reshape(-1, 6)
        d[:, [0, 2]] = d[:, [0, 2]].clip(0, w)
        d[:, [1, 3]] = d[:, [1, 3]].clip(0, h)
        d = d[(d[:, 2] - d[:, 0] > 1) & (d[:, 3] - d[:, 1] > 1)]
        dets.append(d[np.argsort(-d[:, 4], kind="stable")])
    return dets


def _faster_coco_eval(gt_dict, records):
    from faster_coco_eval import COCO, COCOeval_faster

    gt = COCO(gt_dict)
    dt = gt.loadRes(records)
    ev = COCOeval_faster(gt, dt, iouType="bbox")
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats[1], ev.stats[0]  # mAP50, mAP50-95


def _generated_ground_truth(n_images: int = 64, seed: int = 0):
    """coco128-like ground truth: varied image sizes, 0-12 boxes each, a few frequent classes among 80
    (as person dominates COCO), boxes from a few pixels (COCO's small) to most of the image."""
    rng = np.random.default_rng(seed)
    frequent = rng.choice(80, 6, replace=False)
    items = []
    for k in range(n_images):
        w, h = (int(v) for v in rng.choice([320, 427, 480, 500, 640], 2))
        rows = []
        for _ in range(rng.integers(0, 13)):
            cls = rng.choice(frequent) if rng.random() < 0.6 else rng.integers(0, 80)
            bw, bh = np.exp(rng.uniform(np.log(4), np.log([w * 0.9, h * 0.9])))
            x1, y1 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            rows.append([cls, x1, y1, x1 + bw, y1 + bh])
        items.append((Path(f"generated/{k + 1:012d}.jpg"), w, h, np.array(rows, np.float64).reshape(-1, 5)))
    return items


def _check_agreement(items, names, seed):
    dets = _fake_detections(items, seed)
    cat_ids = category_ids(80)

    tps, confs, pcls, tcls, records = [], [], [], [], []
    for (path, _, _, gt), d in zip(items, dets, strict=False):
        # COCO keeps the top 100 detections per image and class; ours never exceed that here
        assert max(np.bincount(d[:, 5].astype(int), minlength=1)) <= 100
        tps.append(match_predictions(torch.from_numpy(d), torch.from_numpy(gt)))
        confs.append(d[:, 4])
        pcls.append(d[:, 5])
        tcls.append(gt[:, 0])
        records += detections_to_coco(path, d, cat_ids)
    res = ap_per_class(np.concatenate(tps), np.concatenate(confs), np.concatenate(pcls), np.concatenate(tcls))
    _, _, map50, map5095 = res.mean_results()

    ref50, ref5095 = _faster_coco_eval(ground_truth_to_coco(items, names, cat_ids), records)
    assert 0.2 < ref50 < 0.95  # a non-trivial case
    print(f"ours {map50:.5f} {map5095:.5f} coco {ref50:.5f} {ref5095:.5f}")
    assert abs(map50 - ref50) < 0.005, (map50, ref50)
    assert abs(map5095 - ref5095) < 0.005, (map5095, ref5095)


@pytest.mark.parametrize("seed", [0, 1])
def test_agrees_with_faster_coco_eval(seed):
    items = _generated_ground_truth()
    assert sum(len(gt) for *_, gt in items) > 300 and any(not len(gt) for *_, gt in items)
    _check_agreement(items, [f"class{i}" for i in range(80)], seed)


@pytest.mark.real_data  # the real coco128 labels (crowded scenes, tiny boxes) and darknet's coco.names
@pytest.mark.parametrize("seed", [0, 1])
def test_agrees_with_faster_coco_eval_on_coco128(shared_dir, seed):
    names = (shared_dir / "darknet-cfg" / "coco.names").read_text().split("\n")[:80]
    _check_agreement(_coco128_ground_truth(shared_dir / "data" / "coco128"), names, seed)


def test_ap_per_class_without_predictions():
    res = ap_per_class(np.zeros((0, 10), bool), np.zeros(0), np.zeros(0), np.array([0, 1, 1]))
    assert res.ap.shape == (2, 10) and res.mean_results() == (0.0, 0.0, 0.0, 0.0)
    empty = ap_per_class(np.zeros((0, 10), bool), np.zeros(0), np.zeros(0), np.zeros(0))
    assert empty.mean_results() == (0.0, 0.0, 0.0, 0.0)

"""Image and box augmentations with YOLOv5 hyperparameter semantics.

Images are uint8 numpy arrays (H, W, 3) in OpenCV's BGR order; boxes travel as pixel xyxy
in ``targets`` rows ``[cls, x1, y1, x2, y2]``. Hyperparameter keys: hsv_h, hsv_s, hsv_v, degrees,
translate, scale, shear, perspective, flipud, fliplr, mosaic, mixup.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import cv2
import numpy as np

PAD_VALUE = 114


def letterbox(
    img: np.ndarray,
    new_shape: int | tuple[int, int] = 640,
    color=(PAD_VALUE,) * 3,
    auto: bool = False,
    scaleup: bool = True,
    stride: int = 32,
) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """Resize keeping the aspect ratio, then pad to ``new_shape`` (h, w).

    Returns ``(img, (ratio_w, ratio_h), (pad_left, pad_top))``. The pads are the pixels actually
    added on the left and top, so ``x_new = x * ratio + pad`` holds exactly. ``auto`` pads only up to
    the next multiple of ``stride``; ``scaleup=False`` never enlarges (better for validation mAP).
    """
    shape = img.shape[:2]
    if isinstance(new_shape, int):
        new_shape = (new_shape, new_shape)
    r = min(new_shape[0] / shape[0], new_shape[1] / shape[1])
    if not scaleup:
        r = min(r, 1.0)
    new_unpad = (int(round(shape[1] * r)), int(round(shape[0] * r)))  # w, h
    dw, dh = new_shape[1] - new_unpad[0], new_shape[0] - new_unpad[1]
    if auto:
        dw, dh = dw % stride, dh % stride
    if (shape[1], shape[0]) != new_unpad:
        img = cv2.resize(img, new_unpad, interpolation=cv2.INTER_LINEAR)
    left, top = dw // 2, dh // 2
    img = cv2.copyMakeBorder(img, top, dh - top, left, dw - left, cv2.BORDER_CONSTANT, value=color)
    ratio = (new_unpad[0] / shape[1], new_unpad[1] / shape[0])
    return img, ratio, (float(left), float(top))


def augment_hsv(img: np.ndarray, hgain: float = 0.5, sgain: float = 0.5, vgain: float = 0.5) -> np.ndarray:
    """Random hue/saturation/value gains applied in place through lookup tables (BGR uint8)."""
    if not (hgain or sgain or vgain):
        return img
    r = np.random.uniform(-1, 1, 3) * [hgain, sgain, vgain] + 1
    hue, sat, val = cv2.split(cv2.cvtColor(img, cv2.COLOR_BGR2HSV))
    x = np.arange(0, 256, dtype=r.dtype)
    lut_hue = ((x * r[0]) % 180).astype(np.uint8)  # OpenCV hue range is 0..179
    lut_sat = np.clip(x * r[1], 0, 255).astype(np.uint8)
    lut_val = np.clip(x * r[2], 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val)))
    cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR, dst=img)
    return img


def box_candidates(
    box1: np.ndarray, box2: np.ndarray, wh_thr: float = 2, ar_thr: float = 20, area_thr: float = 0.1, eps: float = 1e-16
) -> np.ndarray:
    """Keep boxes (``box2``, 4xN before->after) that stay > wh_thr px, keep > area_thr of their
    (scaled) area and have aspect ratio < ar_thr."""
    w1, h1 = box1[2] - box1[0], box1[3] - box1[1]
    w2, h2 = box2[2] - box2[0], box2[3] - box2[1]
    ar = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (ar < ar_thr)


def _affine_matrix(
    height: int,
    width: int,
    src_shape: tuple[int, int],
    degrees: float,
    translate: float,
    scale: float,
    shear: float,
    perspective: float,
) -> tuple[np.ndarray, float]:
    """Compose centre -> perspective -> rotate/scale -> shear -> translate; returns (M, scale)."""
    C = np.eye(3)
    C[0, 2], C[1, 2] = -src_shape[1] / 2, -src_shape[0] / 2  # move the image centre to the origin
    P = np.eye(3)
    P[2, 0] = random.uniform(-perspective, perspective)
    P[2, 1] = random.uniform(-perspective, perspective)
    R = np.eye(3)
    a = random.uniform(-degrees, degrees)
    s = random.uniform(1 - scale, 1 + scale)
    R[:2] = cv2.getRotationMatrix2D(angle=a, center=(0, 0), scale=s)
    S = np.eye(3)
    S[0, 1] = math.tan(random.uniform(-shear, shear) * math.pi / 180)
    S[1, 0] = math.tan(random.uniform(-shear, shear) * math.pi / 180)
    T = np.eye(3)
    T[0, 2] = random.uniform(0.5 - translate, 0.5 + translate) * width
    T[1, 2] = random.uniform(0.5 - translate, 0.5 + translate) * height
    return T @ S @ R @ P @ C, s


def random_perspective(
    img: np.ndarray,
    targets: np.ndarray = (),
    degrees: float = 10,
    translate: float = 0.1,
    scale: float = 0.1,
    shear: float = 10,
    perspective: float = 0.0,
    border: tuple[int, int] = (0, 0),
) -> tuple[np.ndarray, np.ndarray]:
    """Random affine (or perspective) warp of an image and its ``[cls, x1, y1, x2, y2]`` targets.

    ``border`` (negative for mosaics) shrinks the output: out size = in size + 2 * border.
    Box corners are transformed, the enclosing box is clipped to the image, and boxes that became
    too small, too thin (aspect > 20) or lost 90% of their area are dropped.
    """
    height = img.shape[0] + border[0] * 2
    width = img.shape[1] + border[1] * 2
    M, s = _affine_matrix(height, width, img.shape[:2], degrees, translate, scale, shear, perspective)
    if border[0] != 0 or border[1] != 0 or (M != np.eye(3)).any():
        fill = (PAD_VALUE,) * 3
        if perspective:
            img = cv2.warpPerspective(img, M, dsize=(width, height), borderValue=fill)
        else:
            img = cv2.warpAffine(img, M[:2], dsize=(width, height), borderValue=fill)

    targets = np.asarray(targets, dtype=np.float32).reshape(-1, 5)
    n = len(targets)
    if n:
        xy = np.ones((n * 4, 3))
        # four corners per box: (x1,y1), (x2,y2), (x1,y2), (x2,y1)
        xy[:, :2] = targets[:, [1, 2, 3, 4, 1, 4, 3, 2]].reshape(n * 4, 2)
        xy = xy @ M.T
        xy = (xy[:, :2] / xy[:, 2:3] if perspective else xy[:, :2]).reshape(n, 8)
        x, y = xy[:, [0, 2, 4, 6]], xy[:, [1, 3, 5, 7]]
        new = np.stack((x.min(1), y.min(1), x.max(1), y.max(1)), axis=1)
        new[:, [0, 2]] = new[:, [0, 2]].clip(0, width)
        new[:, [1, 3]] = new[:, [1, 3]].clip(0, height)
        keep = box_candidates(targets[:, 1:5].T * s, new.T)
        targets = targets[keep]
        targets[:, 1:5] = new[keep]
    return img, targets


def mosaic4(
    load: Callable[[int], np.ndarray],
    labels_xywhn: Callable[[int], np.ndarray],
    indices: list[int],
    size: int,
    hyp: dict,
) -> tuple[np.ndarray, np.ndarray]:
    """Tile four images around a random centre on a 2*size canvas, then warp back to size x size.

    ``load(i)`` returns image i resized so its long side is ``size``; ``labels_xywhn(i)`` its
    ``[cls, cx, cy, w, h]`` rows (normalised). Returns the image and ``[cls, x1, y1, x2, y2]`` rows.
    """
    border = (-size // 2, -size // 2)
    yc, xc = (int(random.uniform(-b, 2 * size + b)) for b in border)
    canvas = np.full((size * 2, size * 2, 3), PAD_VALUE, dtype=np.uint8)
    all_labels = []
    for k, index in enumerate(indices):
        img = load(index)
        h, w = img.shape[:2]
        if k == 0:  # top left: the image's bottom-right corner touches the centre
            x1a, y1a, x2a, y2a = max(xc - w, 0), max(yc - h, 0), xc, yc
            x1b, y1b, x2b, y2b = w - (x2a - x1a), h - (y2a - y1a), w, h
        elif k == 1:  # top right
            x1a, y1a, x2a, y2a = xc, max(yc - h, 0), min(xc + w, size * 2), yc
            x1b, y1b, x2b, y2b = 0, h - (y2a - y1a), min(w, x2a - x1a), h
        elif k == 2:  # bottom left
            x1a, y1a, x2a, y2a = max(xc - w, 0), yc, xc, min(size * 2, yc + h)
            x1b, y1b, x2b, y2b = w - (x2a - x1a), 0, w, min(y2a - y1a, h)
        else:  # bottom right
            x1a, y1a, x2a, y2a = xc, yc, min(xc + w, size * 2), min(size * 2, yc + h)
            x1b, y1b, x2b, y2b = 0, 0, min(w, x2a - x1a), min(y2a - y1a, h)
        canvas[y1a:y2a, x1a:x2a] = img[y1b:y2b, x1b:x2b]
        padw, padh = x1a - x1b, y1a - y1b
        lb = np.array(labels_xywhn(index), dtype=np.float32).reshape(-1, 5).copy()
        if len(lb):
            lb[:, 1:] = xywhn_to_xyxy(lb[:, 1:], w, h, padw, padh)
        all_labels.append(lb)
    labels = np.concatenate(all_labels, 0)
    labels[:, 1:] = labels[:, 1:].clip(0, 2 * size)  # boxes partly outside the canvas
    return random_perspective(
        canvas,
        labels,
        degrees=hyp.get("degrees", 0.0),
        translate=hyp.get("translate", 0.0),
        scale=hyp.get("scale", 0.0),
        shear=hyp.get("shear", 0.0),
        perspective=hyp.get("perspective", 0.0),
        border=border,
    )


def mixup(img: np.ndarray, labels: np.ndarray, img2: np.ndarray, labels2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Blend two same-size images with a Beta(32, 32) ratio and keep both label sets."""
    r = np.random.beta(32.0, 32.0)
    img = (img.astype(np.float32) * r + img2.astype(np.float32) * (1 - r)).astype(np.uint8)
    return img, np.concatenate((labels, labels2), 0)


def random_flips(
    img: np.ndarray, labels_xywhn: np.ndarray, flipud: float, fliplr: float
) -> tuple[np.ndarray, np.ndarray]:
    """Flip up-down / left-right with the given probabilities; labels are ``[cls, cx, cy, w, h]`` normalised."""
    if flipud and random.random() < flipud:
        img = np.flipud(img)
        labels_xywhn[:, 2] = 1 - labels_xywhn[:, 2]
    if fliplr and random.random() < fliplr:
        img = np.fliplr(img)
        labels_xywhn[:, 1] = 1 - labels_xywhn[:, 1]
    return img, labels_xywhn


def xywhn_to_xyxy(x: np.ndarray, w: float, h: float, padw: float = 0, padh: float = 0) -> np.ndarray:
    """Normalised cx, cy, w, h -> pixel x1, y1, x2, y2 plus an offset (numpy, float32)."""
    y = np.empty_like(x)
    y[:, 0] = w * (x[:, 0] - x[:, 2] / 2) + padw
    y[:, 1] = h * (x[:, 1] - x[:, 3] / 2) + padh
    y[:, 2] = w * (x[:, 0] + x[:, 2] / 2) + padw
    y[:, 3] = h * (x[:, 1] + x[:, 3] / 2) + padh
    return y

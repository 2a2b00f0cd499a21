"""The interface ``validate`` and ``detect`` run models through, and its in-process PyTorch form.

A backend takes a uint8 RGB batch ``(bs, 3, H, W)`` and returns decoded predictions
``(bs, N, 5 + nc)`` (xywh in input pixels, sigmoid-ed objectness and class scores), ready for
:func:`sparseyolo.utils.nms.non_max_suppression`. ``preprocess`` and ``forward`` are separate so
callers can time them separately. Backends over inference runtimes (ONNX files) live in
:mod:`sparseyolo.runtime.backends`; the trainer validates through :class:`TorchBackend`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sparseyolo.utils.nms import non_max_suppression


class Backend:
    """Common attributes: ``names``, ``stride`` (max stride, int), ``device``, ``fixed_shape``
    ((h, w) when the model only accepts one input size, else None), ``fixed_batch``,
    ``static_shapes`` (the runtime compiles the model once per input size: callers should letterbox
    every image to one square size rather than to rectangles that vary) and ``engine`` (the
    inference runtime's name). ``close()`` frees the runtime (sessions, worker processes)."""

    names: list[str]
    stride: int = 32
    device: torch.device = torch.device("cpu")
    fixed_shape: tuple[int, int] | None = None
    fixed_batch: int | None = None
    kind: str = ""
    engine: str = ""
    static_shapes: bool = False
    end2end: bool = False  # forward() already returns NMS-ed (bs, max_det, 6) detections

    def preprocess(self, imgs: torch.Tensor) -> Any:
        raise NotImplementedError

    def forward(self, x: Any) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.forward(self.preprocess(imgs))

    def warmup(self, imgsz: tuple[int, int] = (640, 640)) -> None:
        h, w = self.fixed_shape or imgsz
        self(torch.zeros((self.fixed_batch or 1, 3, h, w), dtype=torch.uint8))

    def close(self) -> None:
        """Free what the backend holds outside this process' Python objects (no-op by default)."""


class TorchBackend(Backend):
    """A ``DetectionModel`` (or any module whose eval forward returns ``(pred, raw)`` or ``pred``)."""

    kind = "pytorch"
    engine = "pytorch"

    def __init__(self, model: nn.Module, device: str | torch.device = "cpu", half: bool = False):
        self.device = torch.device(device)
        self.half = half and self.device.type != "cpu"  # fp16 convs are not supported on CPU
        self.model = model.to(self.device).eval()
        self.model = self.model.half() if self.half else self.model.float()
        if getattr(model, "export_raw", False):
            model.export_raw = False  # we need the decoded predictions
        stride = getattr(model, "stride", None)
        self.stride = int(max(stride.tolist())) if isinstance(stride, torch.Tensor) and stride.numel() else 32
        nc = getattr(model, "nc", None)
        self.names = list(getattr(model, "names", None) or [f"class{i}" for i in range(nc or 0)])

    def preprocess(self, imgs: torch.Tensor) -> torch.Tensor:
        x = imgs.to(self.device, non_blocking=True)
        x = x.half() if self.half else x.float()
        return x / 255.0

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        pred = out[0] if isinstance(out, (list, tuple)) else out
        return pred.float()


def postprocess(
    backend: Backend,
    pred: torch.Tensor,
    conf_thres: float = 0.25,
    iou_thres: float = 0.45,
    classes: list[int] | None = None,
    agnostic: bool = False,
    max_det: int = 300,
    multi_label: bool = False,
) -> list[torch.Tensor]:
    """Per-image (n, 6) detections from ``backend.forward`` output: NMS for decoded predictions, a
    score / class filter for end-to-end (NMS-included) exports."""
    if not backend.end2end:
        return non_max_suppression(
            pred, conf_thres, iou_thres, classes=classes, agnostic=agnostic, max_det=max_det, multi_label=multi_label
        )
    out = []
    for d in pred.float():
        keep = d[:, 4] > conf_thres
        if classes is not None:
            keep &= (d[:, 5:6] == torch.tensor(classes, device=d.device, dtype=d.dtype)).any(1)
        d = d[keep]
        out.append(d[d[:, 4].argsort(descending=True)][:max_det])
    return out

"""``DetectionModel``: a YOLOv3-family detector built from a YAML config."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sparseyolo.models.common import fold_batchnorm
from sparseyolo.models.detect import DECODES, Detect
from sparseyolo.models.parse import MODELS, load_model_yaml, parse_model
from sparseyolo.sparsity.thinning import layer_widths, resize_layers
from sparseyolo.utils.errors import ConfigError, SparseYoloError
from sparseyolo.utils.layer_shapes import layer_flops, weight_layer_output_shapes
from sparseyolo.utils.logging import LOGGER

STRIDE_PROBE = 64  # input size of the dummy forward that measures strides (multiple of 32)


class DetectionModel(nn.Module):
    """YOLO detector from a config name (``yolov3-spp``), a YAML path or a config dict.

    ``nc``, ``depth_multiple`` and ``width_multiple`` override the config values. ``.yaml`` is the
    resolved config (JSON-able, stored in checkpoints) and rebuilds an identical model.
    """

    def __init__(
        self,
        cfg: str | Path | dict = "yolov3-spp",
        ch: int = 3,
        nc: int | None = None,
        depth_multiple: float | None = None,
        width_multiple: float | None = None,
        names: list[str] | None = None,
    ):
        super().__init__()
        self.yaml, src = load_model_yaml(cfg)
        for key, value in (("nc", nc), ("depth_multiple", depth_multiple), ("width_multiple", width_multiple)):
            if value is not None and value != self.yaml.get(key):
                LOGGER.info(f"Overriding {src} {key}={self.yaml.get(key)} with {key}={value}")
                self.yaml[key] = value
        self.yaml["ch"] = ch
        nc_ = self.yaml["nc"]
        if not isinstance(nc_, int) or isinstance(nc_, bool) or nc_ < 1:
            raise ConfigError(f"{src}: nc must be a positive integer, got {nc_!r}")
        if self.yaml.get("decode", "v5") not in DECODES:
            raise ConfigError(f"{src}: decode must be one of {DECODES}, got {self.yaml['decode']!r}")
        if names is not None and len(names) != nc_:
            raise ConfigError(f"{src}: {len(names)} class names given for nc={nc_}")
        self.model, self.save = parse_model(self.yaml, ch=[ch], src=src)
        if self.yaml.get("widths"):
            self._apply_widths(self.yaml["widths"], src)
        if names is None:
            names = self.yaml.get("names")  # a config may carry names; they only fit the original nc
        if names is None or len(names) != self.nc:
            names = [f"class{i}" for i in range(self.nc)]
        self.names = list(names)
        detect = self.detect
        detect.decode = self.yaml.get("decode", "v5")
        strides = self._measure_strides(ch)
        detect.stride.copy_(torch.tensor(strides))
        detect.initialize_biases(strides=strides)

    def _apply_widths(self, widths: dict, src: str) -> None:
        """Resize layers to a thinned model's recorded widths. The Detect convs' outputs depend on
        ``nc`` (which a fine-tune may change), so only their inputs follow the record."""
        if not isinstance(widths, dict):
            raise ConfigError(f"{src}: widths must map layer names to sizes")
        head = f"model.{len(self.model) - 1}."
        fixed = {}
        for name, size in widths.items():
            if str(name).startswith(head) and isinstance(size, (list, tuple)) and len(size) == 2:
                mod = self.get_submodule(name)
                size = [size[0], getattr(mod, "out_channels", size[1])]
            fixed[name] = list(size) if isinstance(size, (list, tuple)) else size
        try:
            resize_layers(self, fixed, where=f"{src}: widths")
        except SparseYoloError as e:
            raise ConfigError(str(e)) from None
        self.yaml["widths"] = fixed

    def record_widths(self) -> None:
        """Store the current layer sizes in ``.yaml`` (after thinning), so checkpoints rebuild them."""
        widths = layer_widths(self)
        with torch.device("meta"):  # the full-width layout, without allocating weights
            reference = layer_widths(DetectionModel({**self.yaml, "widths": None}, ch=self.yaml.get("ch", 3)))
        self.yaml["widths"] = {k: v for k, v in widths.items() if reference.get(k) != v}

    # -- properties --------------------------------------------------------------------------
    @property
    def detect(self) -> Detect:
        return self.model[-1]

    @property
    def nc(self) -> int:
        return self.yaml["nc"]

    @property
    def stride(self) -> torch.Tensor:
        return self.detect.stride

    @property
    def export_raw(self) -> bool:
        return self.detect.export_raw

    @export_raw.setter
    def export_raw(self, value: bool) -> None:
        self.detect.export_raw = bool(value)

    @property
    def decode(self) -> str:
        return self.detect.decode

    @decode.setter
    def decode(self, value: str) -> None:
        if value not in DECODES:
            raise ValueError(f"decode must be one of {DECODES}, got {value!r}")
        self.detect.decode = value
        self.yaml["decode"] = value  # travels with the checkpoint's model_yaml

    # -- forward -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor):
        """Train mode: list of raw level outputs; eval mode: ``(pred, raw)`` (see Detect)."""
        y: list[torch.Tensor | None] = []
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in self.save else None)
        return x

    @torch.no_grad()
    def _measure_strides(self, ch: int) -> list[float]:
        """Strides from a small dummy forward (eval mode, so BN running stats stay untouched).

        Works under ``with torch.device("meta"):`` too, which builds a model without allocating
        or initialising weights (handy for shapes and parameter names)."""
        was_training, raw_flag = self.training, self.export_raw
        self.eval()
        self.export_raw = True
        try:
            s = STRIDE_PROBE
            raw = self.forward(torch.zeros(1, ch, s, s))
        finally:
            self.export_raw = raw_flag
            self.train(was_training)
        return [s / r.shape[-3] for r in raw]

    # -- utilities ---------------------------------------------------------------------------
    def initialize_biases(self, cf: torch.Tensor | None = None) -> None:
        """Set the Detect objectness / class bias priors (see :meth:`Detect.initialize_biases`)."""
        self.detect.initialize_biases(cf)

    @torch.no_grad()
    def flops(self, img_size: int | tuple[int, int] = 640) -> float:
        """GFLOPs (2 x conv multiply-accumulates) at ``img_size``, measured at a small size and
        scaled by area (conv cost is proportional to the output area). QAT blocks count too."""
        h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
        s, p, raw_flag = STRIDE_PROBE, next(self.parameters()), self.export_raw
        try:
            self.export_raw = True
            x = torch.zeros(1, self.yaml.get("ch", 3), s, s, device=p.device, dtype=p.dtype)
            shapes = weight_layer_output_shapes(self, x)
        finally:
            self.export_raw = raw_flag
        modules = dict(self.named_modules())
        weights = {name: modules[name].weight for name in shapes}
        flops = sum(layer_flops(list(w.shape), shapes[name], conv=w.dim() > 2) for name, w in weights.items())
        return flops * (h * w) / (s * s) / 1e9

    def info(self, img_size: int = 640, verbose: bool = False) -> dict:
        """Log and return a summary: layers, parameters, gradients, GFLOPs at ``img_size``."""
        n_p = sum(p.numel() for p in self.parameters())
        n_g = sum(p.numel() for p in self.parameters() if p.requires_grad)
        layers = len(list(self.modules()))
        gflops = self.flops(img_size)
        if verbose:
            for m in self.model:
                LOGGER.info(f"{m.i:>3} {str(m.f):>12} {m.np:>10,}  {m.type}")
        name = Path(self.yaml.get("yaml_file", "model")).stem
        LOGGER.info(
            f"{name} summary: {layers} layers, {n_p:,} parameters, {n_g:,} gradients, "
            f"{gflops:.1f} GFLOPs at {img_size}"
        )
        return {"layers": layers, "parameters": n_p, "gradients": n_g, "gflops": gflops}

    def fuse(self) -> DetectionModel:
        """Fold each Conv's BatchNorm into its convolution for faster inference (in place)."""
        fold_batchnorm(self)
        return self


def build_model(name_or_yaml: str | Path | dict, nc: int | None = None, **overrides) -> DetectionModel:
    """``build_model("yolov3-spp", nc=20)``; also a YAML path or dict. ``overrides``:
    ``depth_multiple``, ``width_multiple``, ``names``, ``ch``."""
    return DetectionModel(name_or_yaml, nc=nc, **overrides)


def model_names() -> list[str]:
    """Registered model names (``--cfg`` choices)."""
    return MODELS.names()

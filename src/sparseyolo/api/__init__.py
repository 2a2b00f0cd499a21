"""The Python API: the CLI's commands as functions that return results instead of printing them.

Keyword names are the CLI flags' names (``--img-size`` is ``img_size``, ``--noplots`` is
``noplots``), and ``sparseyolo <command>`` calls these very functions, so both take one code path::

    import sparseyolo

    run = sparseyolo.train(weights="yolov3-tiny.weights", cfg="yolov3-tiny", data="voc.yaml", img_size=416)
    metrics = sparseyolo.val(run.best, data="voc.yaml", img_size=416)
    files = sparseyolo.export(run.best, img_size=[416])
    speeds = sparseyolo.benchmark([str(files.onnx)], engine="onnxruntime")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["TrainResult", "Metrics", "ExportResult", "train", "val", "detect", "export", "benchmark"]


@dataclass
class TrainResult:
    """A finished training run: its folder, checkpoints and the final epoch's validation metrics."""

    save_dir: Path
    best: Path | None
    last: Path | None
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class Metrics:
    """Validation results. ``per_class``: AP@0.5 by class name; ``speed``: ms per image by stage."""

    map50: float
    map: float
    precision: float
    recall: float
    per_class: dict[str, float]
    speed: dict[str, float]
    save_dir: Path
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExportResult:
    """The files an export wrote, with their sizes (bytes raw and gzip -9)."""

    files: list[Path]
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    map_rows: list[list[str]] = field(default_factory=list)  # --int8: FP32 vs int8 mAP (model, file, ...)

    @property
    def onnx(self) -> Path | None:
        """The main ``.onnx`` file (FP32 or QDQ int8), if one was written."""
        return next((f for f in self.files if f.name.endswith(".onnx") and ".qlinear." not in f.name), None)


def train(**options: Any) -> TrainResult:
    """``sparseyolo train``: ``options`` are its flags (``weights``, ``cfg``, ``data``, ``img_size``,
    ``epochs``, ``recipe``, ``recipe_args``, ``hyp``, ...; see ``sparseyolo train --help``)."""
    from sparseyolo.engine.setup import TrainConfig
    from sparseyolo.engine.trainer import train as run_training
    from sparseyolo.models.checkpoint import load_checkpoint

    given = options.pop("_given", None)
    unknown = set(options) - set(TrainConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"train() got unknown options {sorted(unknown)}; see sparseyolo train --help")
    save_dir = Path(run_training(TrainConfig.from_dict(options), given=given if given is not None else set(options)))
    best, last = save_dir / "weights" / "best.pt", save_dir / "weights" / "last.pt"
    best, last = (best if best.is_file() else None), (last if last.is_file() else None)
    metrics = (load_checkpoint(best).get("metrics") or {}) if best else {}
    return TrainResult(save_dir, best, last, dict(metrics))


def val(weights: str | Path, data: str | Path, noplots: bool = False, **options: Any) -> Metrics:
    """``sparseyolo val``: ``weights`` is a ``.pt``, Darknet ``.weights`` (with ``cfg``) or ``.onnx``
    file (with ``engine="onnxruntime" | "openvino" | "deepsparse"``); ``options`` are the other flags
    (``img_size``, ``batch_size``, ``conf_thres``, ``iou_thres``, ``task``, ``engine``, ...)."""
    from sparseyolo.runtime.val import run

    metrics, _maps, save_dir = run(weights, data, plots=not noplots, **options)
    return Metrics(
        map50=float(metrics["mAP50"]),
        map=float(metrics["mAP50-95"]),
        precision=float(metrics["precision"]),
        recall=float(metrics["recall"]),
        per_class=dict(metrics.get("ap50_per_class", {})),
        speed=dict(metrics.get("speed", {})),
        save_dir=Path(save_dir),
        raw=dict(metrics),
    )


def detect(weights: str | Path, source: str | Path, **options: Any) -> list[Any]:
    """``sparseyolo detect``: one ``Prediction`` (path, ``det`` (n, 6) boxes in image pixels, shape)
    per image; ``options`` are its flags (``img_size``, ``conf_thres``, ``engine``, ``nosave``, ...)."""
    from sparseyolo.runtime.predict import run

    _save_dir, predictions = run(weights, source, **options)
    return predictions


def export(weights: str | Path, **options: Any) -> ExportResult:
    """``sparseyolo export``: ``options`` are its flags (``img_size``, ``batch_size``, ``dynamic``,
    ``include_nms``, ``qlinear_ops``, ``format``, ``int8`` + ``data`` for post-training quantization, ...)."""
    from sparseyolo.api.exporting import export_weights
    from sparseyolo.exporters.size import file_size

    outcome = export_weights(weights, **options)
    sizes = {str(f): (file_size(f).raw, file_size(f).gzip) for f in outcome.files}
    return ExportResult(list(outcome.files), sizes, outcome.map_rows)


def benchmark(models: list[str | Path], engine: str | list[str] | None = None, **options: Any) -> list[Any]:
    """``sparseyolo benchmark``: one ``BenchResult`` (images/s, latency percentiles, ratios) per model
    and engine, timed interleaved; ``options``: ``batch_size``, ``img``, ``threads``, ``time``, ``warmup``, ..."""
    from sparseyolo.runtime.engines import parse_engines
    from sparseyolo.timing.runner import benchmark as run

    renames = {"time": "time_s", "warmup": "warmup_s", "exact_file": "exact_files"}
    kwargs = {renames.get(k, k): v for k, v in options.items() if k not in ("quiet", "json")}
    kwargs["progress"] = not options.get("quiet", False)
    img = kwargs.get("img")
    if img is not None:  # 512, [512] or [384, 640] as on the command line
        img = [img] if isinstance(img, int) else list(img)
        kwargs["img"] = (int(img[0]), int(img[-1]))
    return run([str(m) for m in models], parse_engines(engine), **kwargs)

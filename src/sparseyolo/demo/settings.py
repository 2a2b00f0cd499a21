"""Sizes, schedules and hyperparameters of ``sparseyolo demo`` (the full run and the ``--fast`` smoke run).

The demo trains a narrow YOLOv3-tiny (``width_multiple`` < 1) from scratch on the built-in shapes
dataset, so every number here is chosen for "a meaningful mAP on 2 CPU cores in a few minutes",
not for best accuracy. The recipe stage starts from the baseline's ``best.pt`` and uses the shipped
``yolov3-tiny.channel_pruned_quantized`` recipe unmodified apart from its own variables
(``--recipe-args`` style overrides). Training runs at the small ``img``; the models are fully
convolutional, so export and benchmark also run at the larger ``bench_img``, where the arithmetic
that channel pruning and int8 save outweighs the per-operator overhead of a tiny input.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sparseyolo.utils.errors import ConfigError

CHANNEL_RECIPE = "yolov3-tiny.channel_pruned_quantized"
CHANNEL_SPARSITY = 0.45  # the recipe's own default: 45% of the channels of every prunable conv but the first
DETECT_INDEX = 20  # YOLOv3-tiny's Detect layer: model.20
# twice the recipe's pruning / recovery learning rate: in an 8-epoch run on the small shapes set it
# recovers about 3 points of mAP more after thinning (0.774 vs. 0.746 before export, same baseline)
CHANNEL_INIT_LR = 0.01


@dataclass
class DemoConfig:
    """Everything ``sparseyolo demo`` accepts; :func:`demo_config` fills the presets."""

    out: str = "runs/demo"
    img: int = 160  # data / train / validation size (multiple of 32)
    bench_img: int = 416  # export and benchmark size (the speed figures; multiple of 32)
    width: float = 0.5  # YOLOv3-tiny width_multiple
    n_train: int = 320  # shapes dataset sizes
    n_val: int = 64
    epochs: int = 12  # dense baseline (from scratch)
    sparse_epochs: int = 8  # the recipe stage (from the baseline's best.pt)
    batch_size: int = 16
    threads: int = 2  # torch training threads and ONNX Runtime threads
    # data loader processes. 0: a training run's worker processes outlive it and take ~10 s each to
    # shut down when they are garbage-collected later (40 s of the report stage with 2 workers), while
    # loading 160 px images in the training process costs a few seconds per run
    workers: int = 0
    bench_time: float = 5.0  # measured seconds per model (interleaved)
    bench_warmup: float = 1.0
    seed: int = 0
    keep: bool = False  # reuse finished stages of an earlier demo in ``out``
    fast: bool = False  # smoke-test sizes (seconds, not minutes; the mAP means nothing)
    baseline_hyp: dict[str, Any] = field(default_factory=dict)
    sparse_hyp: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Hyperparameter overrides on top of the shipped files. Baseline: Adam without warm-up and with
# mild augmentation, because a from-scratch run of a dozen epochs has no time for SGD warm-up and
# mosaic (which shrinks the shapes) slows the first epochs down the most.
BASELINE_HYP: dict[str, Any] = {
    "lr0": 0.004,
    "lrf": 0.1,
    "warmup_epochs": 0.0,
    "mosaic": 0.0,
    "mixup": 0.0,
    "scale": 0.25,
    "translate": 0.1,
}
# Recipe stages: the shipped hyp.pruned / hyp.pruned_quantized values but without their 40-epoch
# warm-up (the runs are shorter than that) and with the same light augmentation as the baseline.
SPARSE_HYP: dict[str, Any] = {**BASELINE_HYP, "lr0": 0.002, "degrees": 0.0, "shear": 0.0}

FAST_OVERRIDES: dict[str, Any] = {
    "img": 64,
    "bench_img": 128,
    "width": 0.25,
    "n_train": 16,
    "n_val": 8,
    "epochs": 1,
    "sparse_epochs": 3,
    "batch_size": 8,
    "workers": 0,
    "bench_time": 0.3,
    "bench_warmup": 0.1,
}


def demo_config(**overrides: Any) -> DemoConfig:
    """The full preset, or the ``fast=True`` smoke preset, with ``overrides`` (None = keep) on top."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(overrides) - set(DemoConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"demo_config() got unknown options {sorted(unknown)}")
    base: dict[str, Any] = {"baseline_hyp": dict(BASELINE_HYP), "sparse_hyp": dict(SPARSE_HYP)}
    if overrides.get("fast"):
        base.update(FAST_OVERRIDES)
    cfg = DemoConfig(**{**base, **overrides})
    check_config(cfg)
    return cfg


def check_config(cfg: DemoConfig) -> None:
    """Reject settings the pipeline cannot run with, naming the flag."""
    if cfg.img < 32 or cfg.img % 32:
        raise ConfigError(f"demo: --img must be a multiple of 32 (>= 32), got {cfg.img}")
    if cfg.bench_img < 32 or cfg.bench_img % 32:
        raise ConfigError(f"demo: the benchmark size must be a multiple of 32 (>= 32), got {cfg.bench_img}")
    if not 0.0 < cfg.width <= 1.0:
        raise ConfigError(f"demo: --width must be in (0, 1], got {cfg.width}")
    if cfg.epochs < 1:
        raise ConfigError(f"demo: --epochs must be >= 1, got {cfg.epochs}")
    if cfg.sparse_epochs < 3:
        raise ConfigError(
            f"demo: --sparse-epochs must be >= 3 (prune, recover, then int8 QAT), got {cfg.sparse_epochs}"
        )
    if cfg.threads < 1 or cfg.batch_size < 1 or cfg.workers < 0:
        raise ConfigError("demo: --threads and --batch-size must be >= 1 and --workers >= 0")
    if cfg.n_train < cfg.batch_size or cfg.n_val < 1:
        raise ConfigError(f"demo: {cfg.n_train} training images are fewer than one batch of {cfg.batch_size}")
    if cfg.bench_time <= 0 or cfg.bench_warmup < 0:
        raise ConfigError("demo: --bench-time must be > 0 and the warm-up >= 0")


def channel_recipe_args(sparse_epochs: int, width: float) -> dict[str, Any]:
    """Shorten ``yolov3-tiny.channel_pruned_quantized``: prune channels over about the first half
    (thinning at ``pruning_end_epoch``), recover, then int8 QAT for the last quarter (at least one
    epoch), at ``CHANNEL_INIT_LR``. Needs 3+ epochs; the recovery phase is never empty.

    ``round_to`` shrinks with the width: the recipe's 8 needs 16+ channels in the first layer (the
    full-width model); a narrower one keeps multiples of the largest power of two that still leaves
    its narrowest layer half its channels.
    """
    if sparse_epochs < 3:
        raise ConfigError(f"demo: the channel recipe needs 3+ epochs (prune, recover, QAT), got {sparse_epochs}")
    qat = max(1, round(sparse_epochs / 4))
    q_start = sparse_epochs - qat
    end = max(1, min(q_start - 1, round(sparse_epochs / 2)))
    return {
        "num_epochs": sparse_epochs,
        "pruning_end_epoch": end,
        "quantization_epochs": qat,
        "pruning_update_frequency": _update_frequency(end),
        "round_to": round_to_for_width(width),
        "init_lr": CHANNEL_INIT_LR,
        # the narrow demo model keeps its 3-channel stem conv in float, which int8 kernels run slower
        # at this width (the recipe's notes give the measurement); the Detect head stays in float too
        "quantized_layers": [f"model.{i}" for i in range(1, DETECT_INDEX)],
    }


def round_to_for_width(width: float, sparsity: float = CHANNEL_SPARSITY) -> int:
    """The recipe's ``round_to`` (8), or the largest power of two that the narrowest layer of
    YOLOv3-tiny at ``width`` (its first conv: 16 channels at full width, never fewer than 8) would still
    keep after pruning: a bound for every layer, whether or not the recipe prunes the first conv."""
    from sparseyolo.models.parse import make_divisible

    narrowest = make_divisible(16 * width, 8)
    kept = max(1, narrowest - round(sparsity * narrowest))
    r = 1
    while r * 2 <= min(8, kept):
        r *= 2
    return r


def _update_frequency(pruning_epochs: int) -> float:
    # the shipped recipes update every half epoch; keep several steps even for a 1-epoch schedule
    return 0.5 if pruning_epochs >= 2 else 0.25


def model_yaml(width: float) -> dict[str, Any]:
    """The shipped ``yolov3-tiny`` config with ``width_multiple`` = ``width`` (parameter and module names
    unchanged, so the shipped recipes' lists apply as they are)."""
    from sparseyolo.models.parse import load_model_yaml

    d, _ = load_model_yaml("yolov3-tiny")
    d = dict(d)
    d["width_multiple"] = float(width)
    return d


def hyp_dict(base: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """A shipped hyperparameter file (``scratch``, ``pruned``, ...) with ``overrides`` applied."""
    from sparseyolo.engine.hyp import load_hyp

    hyp = dict(load_hyp(base))
    unknown = set(overrides) - set(hyp)
    if unknown:
        raise ConfigError(f"demo: unknown hyperparameters {sorted(unknown)}")
    hyp.update(overrides)
    return hyp


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    import yaml

    from sparseyolo.utils.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))
    return path

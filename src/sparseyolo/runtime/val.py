"""``sparseyolo val``: load weights or an ``.onnx`` file, build the split's loader, and validate."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

import numpy as np

from sparseyolo.evaluation.validation import validate
from sparseyolo.runtime.backends import TorchBackend, load_backend, select_device
from sparseyolo.utils.errors import SparseYoloError
from sparseyolo.utils.io import increment_path
from sparseyolo.utils.logging import LOGGER


def run(
    weights: str | Path,
    data: str | Path,
    img_size: int = 416,
    batch_size: int = 32,
    conf_thres: float = 0.001,
    iou_thres: float = 0.6,
    max_det: int = 300,
    task: str = "val",
    device: str = "",
    single_cls: bool = False,
    verbose: bool = False,
    save_json: bool = False,
    save_txt: bool = False,
    save_conf: bool = False,
    project: str | Path = "runs/val",
    name: str = "exp",
    exist_ok: bool = False,
    rect: bool = True,
    half: bool = False,
    cfg: str | None = None,
    workers: int = 8,
    plots: bool = True,
    agnostic: bool = False,
    multi_label: bool = True,
    engine: str | None = None,
    exact_file: bool = False,
) -> tuple[dict, np.ndarray, Path]:
    """``sparseyolo val``: load weights (``.pt``, Darknet ``.weights`` + ``cfg``, ``.onnx``), build
    the ``task`` split loader from the data YAML, validate, and write results into
    ``project/name``. Returns ``(metrics, maps, save_dir)``.

    ``engine`` runs an ``.onnx`` file on onnxruntime (default), openvino or deepsparse; an int8
    export runs in the form that engine runs fastest unless ``exact_file`` (see ``load_backend``)."""
    from sparseyolo.data.config import load_data_config
    from sparseyolo.data.dataset import create_dataloader

    if task not in ("val", "test", "train"):
        raise SparseYoloError(f"--task must be val, test or train, got {task!r}")
    data_cfg = load_data_config(data)
    split = data_cfg.get(task)
    if not split:
        raise SparseYoloError(f"{data}: no {task!r} split defined")
    dev = select_device(device)
    # no nc: never rebuild the head
    backend = load_backend(weights, dev, half=half, cfg=cfg, engine=engine, exact_file=exact_file)
    with closing(backend):  # sessions, DeepSparse worker processes
        names = data_cfg["names"]
        if not single_cls and len(backend.names) and len(backend.names) != len(names):
            raise SparseYoloError(
                f"{weights} predicts {len(backend.names)} classes but {data} lists "
                f"{len(names)}; pass the matching data YAML (or --single-cls)"
            )
        if backend.fixed_shape is not None:
            if rect or max(backend.fixed_shape) != img_size:
                LOGGER.info(
                    f"{Path(weights).name} has a fixed {backend.fixed_shape[0]}x{backend.fixed_shape[1]} "
                    "input: using square letterboxing at that size"
                )
            img_size, rect = max(backend.fixed_shape), False
        elif backend.static_shapes and rect:
            LOGGER.info(f"{backend.engine} compiles one input size at a time: using square letterboxing (no --rect)")
            rect = False
        stride = backend.stride
        if img_size % stride:
            new = int(np.ceil(img_size / stride) * stride)
            LOGGER.warning(f"WARNING: --img {img_size} is not a multiple of the stride {stride}; using {new}")
            img_size = new
        save_dir = increment_path(Path(project) / name, exist_ok=exist_ok)
        if save_txt:
            (save_dir / "labels").mkdir(parents=True, exist_ok=True)
        loader, _ = create_dataloader(
            split,
            img_size,
            batch_size,
            stride,
            rect=rect,
            pad=0.5 if rect else 0.0,
            workers=workers,
            prefix=f"{task}: ",
            nc=None if single_cls else len(names),
        )
        if isinstance(backend, TorchBackend) and dev.type != "cpu":
            backend.warmup((img_size, img_size))
        metrics, maps = validate(
            backend,
            loader,
            conf_thres,
            iou_thres,
            max_det,
            names,
            save_dir,
            plots,
            save_json,
            half=half,
            verbose=verbose,
            single_cls=single_cls,
            save_txt=save_txt,
            save_conf=save_conf,
            agnostic=agnostic,
            multi_label=multi_label,
        )
        LOGGER.info(f"Results saved to {save_dir}")
        return metrics, maps, save_dir

"""Plain helper functions shared by several test modules (fixtures live in ``conftest.py``).

Test modules import from here, never from one another: ``from helpers import _error, session``.
Nothing here reads ``../shared``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from torch import nn

# --------------------------------------------------------------------------- CLI runs (bad-input tests)

# a recipe that prunes one conv to 50% within the first epoch; {mod}/{params}/{final}/{extra} make bad variants
RECIPE = """\
num_epochs: 1
modifiers:
  - !EpochRangeModifier
    start_epoch: 0.0
    end_epoch: eval(num_epochs)
  - !{mod}
    params: {params}
    init_sparsity: 0.05
    final_sparsity: {final}
    start_epoch: 0.0
    end_epoch: 1.0
    update_frequency: 0.5
{extra}"""


def _recipe(
    path: Path,
    mod: str = "GMPruningModifier",
    params: str = '["model.4.conv.weight"]',
    final: str = "0.5",
    extra: str = "",
) -> Path:
    path.write_text(RECIPE.format(mod=mod, params=params, final=final, extra=extra))
    return path


def _proc(*args, cwd: Path, env: dict | None = None, timeout: float = 240) -> tuple[int, str]:
    """``python -m sparseyolo ARGS`` -> (exit code, stdout + stderr); never a traceback on stderr."""
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    out = subprocess.run(
        [sys.executable, "-m", "sparseyolo", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
    )
    assert "Traceback" not in out.stderr, out.stderr[-4000:]
    return out.returncode, out.stdout + out.stderr


def _error(rc: int, text: str, cmd: str, *needles: str) -> str:
    """Assert exit 2 with ``sparseyolo CMD: error: ...`` containing every needle; return the message."""
    marker = f"sparseyolo {cmd}: error: "
    assert rc == 2, f"exit code {rc}, expected 2:\n{text[-3000:]}"
    assert marker in text, text[-3000:]
    msg = text[text.index(marker) + len(marker) :]
    for needle in needles:
        assert needle in msg, f"{needle!r} not in the error message: {msg}"
    assert "Traceback" not in text
    return msg


def _val_args(weights, data_yaml, project: Path, *extra) -> list:
    """``sparseyolo val`` arguments for a 64-px CPU run of ``weights`` on ``data_yaml``."""
    return ["val", "--weights", weights, "--data", data_yaml, "--img", "64", "--workers", "0", "--device", "cpu",
            "--project", project, *extra]  # fmt: skip


def _train_args(data: dict, project: Path, *extra) -> list:
    """``sparseyolo train`` arguments for a 1-epoch, 64-px run on ``data`` (the ``bad_data`` fixture)."""
    return [
        "train",
        "--cfg",
        data["cfg"],
        "--data",
        data["data"],
        "--img",
        "64",
        "--batch-size",
        "4",
        "--epochs",
        "1",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--project",
        project,
        "--noplots",
        "--no-tensorboard",
        "--noval",
        *extra,
    ]


# --------------------------------------------------------------------------- training (Python API)

FAST = dict(img_size=64, batch_size=4, workers=0, device="cpu", noplots=True, tensorboard=False)


def _load(path: Path) -> dict:
    from sparseyolo.models.checkpoint import load_checkpoint

    return load_checkpoint(path)


# --------------------------------------------------------------------------- small models and ONNX files


def tiny_cnn(ch: int = 8, sparsity: float = 0.0, seed: int = 0) -> nn.Module:
    """A small conv net; ``sparsity`` zeroes that fraction of each conv weight by magnitude."""
    torch.manual_seed(seed)
    m = nn.Sequential(
        nn.Conv2d(3, ch, 3, 2, 1),
        nn.ReLU(),
        nn.Conv2d(ch, ch * 2, 3, 1, 1),
        nn.ReLU(),
        nn.Conv2d(ch * 2, 6, 1),
        nn.Flatten(1),
        nn.LazyLinear(4),
    ).eval()
    with torch.no_grad():
        m(torch.zeros(1, 3, 32, 32))
        if sparsity > 0:
            for mod in m.modules():
                if isinstance(mod, (nn.Conv2d, nn.Linear)):
                    w = mod.weight
                    k = int(round(sparsity * w.numel()))
                    idx = w.abs().flatten().argsort()[:k]
                    w.view(-1)[idx] = 0.0
    return m


def export_onnx(model: nn.Module, path: Path, img: int = 32, dynamic: bool = True) -> Path:
    """A plain ``torch.onnx.export`` (opset 13, input ``images``), not sparseyolo's exporter."""
    axes = {"images": {0: "batch"}} if dynamic else None
    torch.onnx.export(
        model,
        torch.zeros(1, 3, img, img),
        str(path),
        dynamo=False,
        opset_version=13,
        input_names=["images"],
        output_names=["out"],
        dynamic_axes=axes,
    )
    return path


def session(path):
    """A single-threaded ONNX Runtime CPU session."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def randomize_bn(model: nn.Module, seed: int = 1, bias_halfwidth: float = 0.2) -> None:
    """Non-trivial BatchNorm statistics and affine terms, so that folding BN is really tested."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * (2 * bias_halfwidth) - bias_halfwidth)


def prune(model: nn.Module, amount: float = 0.6) -> None:
    """Zero the smallest ``amount`` of every conv weight by magnitude (in place)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                w = m.weight
                k = int(w.numel() * amount)
                thr = w.abs().flatten().kthvalue(k).values
                w[w.abs() <= thr] = 0.0


# --------------------------------------------------------------------------- thinned (filter-pruned) models

FILTER_PRUNING = """modifiers:
  - !GMPruningModifier {params: __ALL_PRUNABLE__, init_sparsity: 0.5, final_sparsity: 0.5, mask_type: filter,
                        round_to: 8, start_epoch: 0, end_epoch: 0, update_frequency: 1}
"""
# yolov3-spp at half width keeps the layout (SPP, shortcuts, three levels) at a quarter of the cost
BUILDS = {"yolov3-tiny": {}, "yolov3-spp": {"width_multiple": 0.5}}


def thinned_model(name: str):
    """A random-weight ``name`` (nc=3) with half its filters removed, BN statistics randomised."""
    from sparseyolo.models import build_model
    from sparseyolo.recipe import Recipe

    torch.manual_seed(0)
    model = build_model(name, nc=3, **BUILDS[name])
    manager = Recipe.load(FILTER_PRUNING).manager()
    manager.attach(
        model, torch.optim.SGD(model.parameters(), lr=0.01), steps_per_epoch=1, example_inputs=torch.zeros(1, 3, 64, 64)
    )
    model.record_widths()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1.0, 0.2)
                m.bias.normal_(0.0, 0.2)
        model.detect.anchors[0, 0] = torch.tensor([10.5, 13.25])  # non-integer anchors travel exactly
    model.decode = "darknet"  # what a Darknet import decodes with
    return model.eval()


# the columns results.csv and the loggers must carry, spelled out here (not imported from the logger)
LOGGED_COLUMNS = (
    "train/box_loss",
    "train/obj_loss",
    "train/cls_loss",
    "metrics/precision",
    "metrics/recall",
    "metrics/mAP_0.5",
    "metrics/mAP_0.5:0.95",
    "val/box_loss",
    "val/obj_loss",
    "val/cls_loss",
    "x/lr0",
    "x/lr1",
    "x/lr2",
)

"""Record SparseML 1.8.0's own schedule on a mixed recipe: the reference for tests/test_sparseml_parity.py.

What it does: builds a small deterministic model (three convs and a linear layer, seed 0) and an SGD
optimizer with two param groups (weights, biases), loads tests/data/sparseml_parity/recipe.yaml
into SparseML's ``ScheduledModifierManager`` and trains for 6 epochs x 10 steps on fixed random
batches, driven exactly as SparseML's own trainers drive it: ``manager.modify(model, optimizer,
steps_per_epoch)`` returns a wrapper whose ``step()`` calls ``manager.update`` (schedules, mask
updates, learning rate) with the current fractional epoch, then ``optimizer.step()``, then re-applies
the masks; ``manager.finalize(model)`` at the end. After every optimizer step it records, for the
step just taken: the number of zeros in each pruned weight, and each param group's lr and weight
decay (what that step ran with). The result is tests/data/sparseml_parity/trajectory.json.

How trajectory.json was produced (SparseML needs its own venv; .venv-* is git-ignored)::

    python3 -m venv .venv-sparseml
    .venv-sparseml/bin/pip install torch==2.13.0 'setuptools<81' sparseml==1.8.0 sparsezoo==1.8.1
    NM_DISABLE_ANALYTICS=1 .venv-sparseml/bin/python scripts/sparseml_reference.py

with Python 3.11, torch 2.13.0+cpu, sparseml 1.8.0, sparsezoo 1.8.1 (the versions are also written
into the JSON). ``--check`` re-runs SparseML and compares with the committed file instead of writing.

The model, data and training loop are importable without SparseML (``build_model``,
``build_optimizer``, ``batches``, ``loss_fn``, ``PRUNED``): the parity test runs our
``RecipeManager`` on exactly the same objects.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "sparseml_parity"
RECIPE = DATA / "recipe.yaml"
TRAJECTORY = DATA / "trajectory.json"

STEPS_PER_EPOCH = 10
EPOCHS = 6
PRUNED = ("conv0.weight", "conv1.weight", "conv2.weight", "fc.weight")


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(4, 16, 3, padding=1)
        self.conv1 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 32, 1)  # input channels in blocks of 4 for the [1, 4] mask
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv0(x))
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean(dim=(2, 3)))


def build_model() -> nn.Module:
    torch.manual_seed(0)
    return TinyNet()


def build_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """SGD with two param groups: 0 = weights, 1 = biases (initial lr 0.1 / wd 0: the recipe sets both)."""
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    return torch.optim.SGD([{"params": weights}, {"params": biases}], lr=0.1, momentum=0.9, weight_decay=0.0)


def batches(n: int = EPOCHS * STEPS_PER_EPOCH, seed: int = 123) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 4, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(n)]


def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x), y)


def snapshot(model: nn.Module, optimizer: torch.optim.Optimizer, epoch: float) -> dict:
    """What the step just taken ran with: zeros per pruned weight, lr and weight decay per group."""
    named = dict(model.named_parameters())
    return {
        "epoch": epoch,
        "zeros": {name: int((named[name].detach() == 0).sum()) for name in PRUNED},
        "lr": [g["lr"] for g in optimizer.param_groups],
        "weight_decay": [g["weight_decay"] for g in optimizer.param_groups],
    }


def run_sparseml() -> dict:
    os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")
    from importlib.metadata import version

    from sparseml.pytorch.optim import ScheduledModifierManager

    torch.set_num_threads(1)
    model = build_model()
    optimizer = build_optimizer(model)
    manager = ScheduledModifierManager.from_yaml(str(RECIPE))
    # what SparseML's trainers do (e.g. its yolov5 / image-classification integrations)
    wrapped = manager.modify(model, optimizer, steps_per_epoch=STEPS_PER_EPOCH)
    named = dict(model.named_parameters())
    steps = []
    for x, y in batches():
        epoch = wrapped.wrapped_epoch  # the epoch manager.update sees inside this step()
        loss_fn(model, x, y).backward()
        wrapped.step()
        optimizer.zero_grad()
        steps.append(snapshot(model, optimizer, epoch))
    manager.finalize(model)
    return {
        "produced_by": "scripts/sparseml_reference.py",
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "sparseml": version("sparseml"),
            "sparsezoo": version("sparsezoo"),
        },
        "steps_per_epoch": STEPS_PER_EPOCH,
        "epochs": EPOCHS,
        "numel": {name: named[name].numel() for name in PRUNED},
        "steps": steps,
    }


def dump(data: dict) -> str:
    """One line per step keeps the file small and diffs readable."""
    head = {k: v for k, v in data.items() if k != "steps"}
    lines = json.dumps(head, indent=1)[:-2] + ',\n "steps": [\n'
    lines += ",\n".join("  " + json.dumps(s) for s in data["steps"])
    return lines + "\n ]\n}\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed trajectory, do not write")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)  # SparseML writes its modifier log to ./sparse_logs
        data = run_sparseml()
        os.chdir(ROOT)
    text = dump(data)
    if args.check:
        saved = json.loads(TRAJECTORY.read_text())
        same = saved["steps"] == data["steps"]
        print("trajectory matches" if same else "trajectory DIFFERS from the committed file")
        return 0 if same else 1
    TRAJECTORY.write_text(text)
    print(f"wrote {TRAJECTORY.relative_to(ROOT)} ({len(data['steps'])} steps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

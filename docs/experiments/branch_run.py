"""Branch a recipe run at one of its saved checkpoints, with some recipe variables changed.

An ablation of a late phase (QAT's BatchNorm statistics, its observers) need not repeat the 34 epochs
before it: both arms continue the same ``epochN.pt`` (``train --save-period``), so they share every
epoch before the change. (In stop 30 a race in the loss made resumed QAT epochs differ from run to run;
stop 31 fixed it, docs/results.md.) ``--resume`` refuses changed settings by
design; this script writes a copy of the checkpoint whose stored recipe is the original recipe file
re-read with the new variables, into a new run folder, and refuses a change to any modifier that had
already started.

    python docs/experiments/branch_run.py runs/train/pq/weights/epoch34.pt \\
        recipes/yolov3-tiny.pruned_quantized.md runs/train/pq-bn34 freeze_bn_stats_epoch=34
    sparseyolo train --resume runs/train/pq-bn34/weights/last.pt
"""

from __future__ import annotations

import argparse
import difflib
from pathlib import Path

from sparseyolo.models.checkpoint import load_checkpoint, save_checkpoint
from sparseyolo.recipe import Recipe, parse_recipe_args


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", type=Path, help="epochN.pt or last.pt of an unfinished recipe run")
    p.add_argument("recipe", type=Path, help="the recipe file the run was started with")
    p.add_argument("out", type=Path, help="new run folder (must not exist)")
    p.add_argument("args", help="recipe variables to change: name=value,name=value")
    a = p.parse_args()

    ckpt = load_checkpoint(a.checkpoint)
    args = dict(ckpt.get("recipe_args") or {})
    args.update(parse_recipe_args(a.args))
    old, new = Recipe.load(ckpt["recipe"]), Recipe.load(a.recipe, args)
    done = ckpt["epoch"] + 1  # epochs already trained
    # the saved state says which modifiers have started: one starting at an epoch boundary (QAT at 35 in
    # epoch35.pt) has already run its start, after the previous epoch's last step
    states = (ckpt.get("recipe_state") or {}).get("modifiers") or []
    if len(states) != len(old.modifiers):
        raise SystemExit(f"{a.checkpoint}: its recipe state does not match its recipe")
    for m_old, m_new, state in zip(old.modifiers, new.modifiers, states, strict=True):
        if state.get("started") and m_old.to_dict() != m_new.to_dict():
            raise SystemExit(f"{m_old.tag} has started in {a.checkpoint} (epoch {done}): cannot change it")
    diff = difflib.unified_diff(old.to_yaml().splitlines(), new.to_yaml().splitlines(), lineterm="", n=0)
    print("\n".join(diff) or "no change")

    ckpt["recipe"], ckpt["recipe_args"] = new.to_yaml(), args
    ckpt["train_args"]["recipe_args"] = args
    ckpt["train_args"]["name"] = a.out.name
    (a.out / "weights").mkdir(parents=True)
    save_checkpoint(a.out / "weights" / "last.pt", **ckpt)  # atomic, like the trainer's
    print(f"branched at epoch {done}: sparseyolo train --resume {a.out / 'weights' / 'last.pt'}")


if __name__ == "__main__":
    main()

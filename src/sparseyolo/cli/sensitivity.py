"""``sparseyolo analyze --sensitivity``: score a detector on a small validation subset while pruning
each layer alone, then write the heat map, JSON and a suggested recipe."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sparseyolo.analysis.scoring import detection_scorer
from sparseyolo.analysis.sensitivity import (
    plot_sensitivity,
    recipe_text,
    sensitivity_analysis,
    suggest_targets,
)
from sparseyolo.sparsity.params import prunable_param_names
from sparseyolo.utils.io import atomic_write_text
from sparseyolo.utils.logging import LOGGER


def run_sensitivity(model, args: argparse.Namespace, save_dir: Path, img: tuple[int, int]) -> dict[str, Path]:
    """Run the analysis for the CLI and write sensitivity.json / sensitivity.png / recipe.md."""
    score = detection_scorer(args.data, max(img), args.sens_images, args.batch_size, args.sens_metric)
    params = prunable_param_names(model, min_numel=args.sens_min_params)
    LOGGER.info(f"sensitivity: {len(params)} layers x {len(args.sens_levels)} levels on {args.sens_images} images")
    result = sensitivity_analysis(model, score, params, levels=args.sens_levels, higher_is_better=True)
    targets = suggest_targets(result, tolerance=args.sens_tolerance)
    note = (
        f"Scored by {args.sens_metric} on {args.sens_images} images of {args.data} "
        f"(baseline {result.baseline:.4f}, tolerance {args.sens_tolerance:.0%})."
    )
    files = {
        "json": atomic_write_text(save_dir / "sensitivity.json", json.dumps(result.to_dict(), indent=2)),
        "plot": plot_sensitivity(result, save_dir / "sensitivity.png"),
        "recipe": atomic_write_text(save_dir / "recipe.md", recipe_text(targets, num_epochs=args.epochs, note=note)),
    }
    ranking = result.ranking()
    print(
        f"\nsensitivity baseline {args.sens_metric} {result.baseline:.4f}; most sensitive: "
        + ", ".join(f"{n} ({targets[n]})" for n in ranking[:5])
    )
    print(f"suggested recipe: {files['recipe']}")
    return files

"""Model analysis: per-layer sparsity / FLOPs / channels, pruning sensitivity, and run reports."""

from sparseyolo.analysis.layers import (
    LayerStats,
    ModelAnalysis,
    analyze_module,
    analyze_onnx,
)
from sparseyolo.analysis.report import RunInfo, build_report, read_run
from sparseyolo.analysis.sensitivity import (
    SensitivityResult,
    recipe_text,
    sensitivity_analysis,
    suggest_targets,
)

__all__ = [
    "analyze_module",
    "analyze_onnx",
    "LayerStats",
    "ModelAnalysis",
    "sensitivity_analysis",
    "SensitivityResult",
    "suggest_targets",
    "recipe_text",
    "RunInfo",
    "read_run",
    "build_report",
]

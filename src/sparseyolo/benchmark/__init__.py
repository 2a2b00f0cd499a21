"""Benchmarking and model analysis: engines, interleaved runner, per-layer analysis, sensitivity, reports.

```python
from sparseyolo.benchmark import benchmark, results_table
results = benchmark(["dense.onnx", "pruned.onnx"], ["onnxruntime", "deepsparse"], batch_size=1,
                    img=(512, 512), threads=2, time_s=10)
print(results_table(results))
```
"""

from sparseyolo.benchmark.analyze import LayerStats, ModelAnalysis, analyze_module, analyze_onnx
from sparseyolo.benchmark.engines import ENGINES, Engine, EngineUnavailable, Runner, get_engine, parse_engines
from sparseyolo.benchmark.onnx_info import ModelInfo, read_model_info, resolve_input_shapes
from sparseyolo.benchmark.report import RunInfo, build_report, read_run
from sparseyolo.benchmark.runner import BenchResult, benchmark
from sparseyolo.benchmark.sensitivity import (SensitivityResult, recipe_text, sensitivity_analysis,
                                              suggest_targets)
from sparseyolo.benchmark.table import results_json, results_table

__all__ = [
    "benchmark", "BenchResult", "results_table", "results_json", "ENGINES", "Engine", "Runner", "EngineUnavailable",
    "get_engine", "parse_engines", "ModelInfo", "read_model_info", "resolve_input_shapes", "analyze_module",
    "analyze_onnx", "LayerStats", "ModelAnalysis", "sensitivity_analysis", "SensitivityResult", "suggest_targets",
    "recipe_text", "RunInfo", "read_run", "build_report",
]

"""Timing: the interleaved benchmark runner and its tables.

```python
from sparseyolo.timing import benchmark, results_table
results = benchmark(["dense.onnx", "pruned.onnx"], ["onnxruntime", "deepsparse"], batch_size=1,
                    img=(512, 512), threads=2, time_s=10)
print(results_table(results))
```
"""

from sparseyolo.runtime.engines import parse_engines
from sparseyolo.timing.output import results_json, results_notes, results_table
from sparseyolo.timing.runner import BenchResult, benchmark

__all__ = ["benchmark", "BenchResult", "results_table", "results_notes", "results_json", "parse_engines"]

"""``sparseyolo demo``: the whole workflow on the built-in shapes dataset (see :mod:`sparseyolo.demo.pipeline`).

```python
from sparseyolo.demo import demo_config, run_demo, summary
result = run_demo(demo_config(out="runs/demo"))        # or demo_config(fast=True) for a smoke run
print(summary(result))
```
"""

from sparseyolo.demo.pipeline import DemoResult, run_demo, summary
from sparseyolo.demo.settings import DemoConfig, demo_config
from sparseyolo.demo.stages import DemoStageError

__all__ = ["DemoConfig", "DemoResult", "DemoStageError", "demo_config", "run_demo", "summary"]

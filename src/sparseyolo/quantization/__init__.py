"""Quantization-aware training on PyTorch's fake-quantize ops (model-agnostic; no torch.ao).

```python
from sparseyolo.quantization import QATConfig, prepare_qat, freeze_bn_stats, disable_observers
prepare_qat(model, ["model.0", "model.1"], QATConfig())   # in place, keeps the Parameters
calibrate(model, batches, method="mse")                   # post-training: ranges, bias correction, frozen
```
"""

from sparseyolo.quantization.calibration import CalibrationReport, calibrate, correct_bias
from sparseyolo.quantization.config import QATConfig
from sparseyolo.quantization.fake_quant import ActivationQuantizer, WeightQuantizer
from sparseyolo.quantization.histogram import CalibrationError, HistogramObserver
from sparseyolo.quantization.modules import QATConv2d, QATConvBnAct, QATLinear
from sparseyolo.quantization.prepare import (
    disable_observers,
    enable_observers,
    freeze_bn_stats,
    is_qat_model,
    prepare_qat,
    qat_report,
    quantizers_bypassed,
    uninitialized_quantizers,
)

__all__ = [
    "QATConfig",
    "prepare_qat",
    "freeze_bn_stats",
    "disable_observers",
    "enable_observers",
    "is_qat_model",
    "uninitialized_quantizers",
    "qat_report",
    "quantizers_bypassed",
    "ActivationQuantizer",
    "WeightQuantizer",
    "QATConvBnAct",
    "QATConv2d",
    "QATLinear",
    "calibrate",
    "correct_bias",
    "CalibrationError",
    "CalibrationReport",
    "HistogramObserver",
]

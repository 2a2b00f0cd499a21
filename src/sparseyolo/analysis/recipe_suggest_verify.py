"""``recipe suggest --verify RUN_DIR``: the trained model of a suggested recipe, timed against the dense
FP32 model it started from, on the suggestion's engine and image size."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from sparseyolo.analysis import recipe_suggest_timing as timing
from sparseyolo.analysis.recipe_suggest import Suggestion
from sparseyolo.utils.errors import SparseYoloError
from sparseyolo.utils.logging import LOGGER


@dataclass
class Verification:
    predicted_speedup: float
    measured_speedup: float
    fp32_ms: float  # medians over the rounds
    trained_ms: float
    round_speedups: list[float] = field(default_factory=list)  # one per interleaved round: the spread

    @property
    def error(self) -> float:
        """Relative error of the prediction."""
        return self.predicted_speedup / self.measured_speedup - 1.0


def find_suggestion(run_dir: Path) -> Path:
    """The ``suggest.json`` beside the recipe a training run used (its ``opt.yaml`` names the recipe)."""
    import yaml

    opt = run_dir / "opt.yaml"
    if not opt.is_file():
        raise SparseYoloError(f"{run_dir}: not a training run folder (no opt.yaml)")
    recipe = (yaml.safe_load(opt.read_text()) or {}).get("recipe")
    candidate = Path(str(recipe)).parent / "suggest.json" if recipe else None
    if candidate is None or not candidate.is_file():
        raise SparseYoloError(f"{run_dir}: its recipe ({recipe}) has no suggest.json beside it; pass --suggestion FILE")
    return candidate


def verify(
    run_dir: str | Path, suggestion: Suggestion, threads: int | None = None, time_s: float = 2.5
) -> Verification:
    """Time the run's ``best.pt`` against the dense FP32 model the suggestion started from, interleaved,
    on the suggestion's engine and image size, in :data:`~.recipe_suggest_timing.DECIDING_ROUNDS` rounds of
    ``time_s`` per file (medians; the plan behind the prediction was timed the same way)."""
    from sparseyolo.runtime.loading import load_torch_model

    best = Path(run_dir) / "weights" / "best.pt"
    if not best.is_file():
        raise SparseYoloError(f"{run_dir}: no weights/best.pt to verify")
    trained, _ = load_torch_model(best)
    dense, _ = load_torch_model(suggestion.weights)
    with tempfile.TemporaryDirectory(prefix="sparseyolo-verify-") as tmp:
        from sparseyolo.quantization import is_qat_model

        fp32 = _export_as_is(dense, Path(tmp) / "dense.onnx", suggestion)
        if suggestion.int8 and not is_qat_model(trained):
            LOGGER.warning(f"{best} is not quantized, though the suggestion was for int8")
        ours = _export_as_is(trained, Path(tmp) / "trained.onnx", suggestion)
        (fp32_ms, trained_ms), rounds = timing.median_ms(
            [fp32, ours], suggestion.engine, suggestion.img, threads, time_s
        )
    per_round = [r[0] / r[1] for r in rounds]
    return Verification(suggestion.predicted_speedup, fp32_ms / trained_ms, fp32_ms, trained_ms, per_round)


def _export_as_is(model: nn.Module, path: Path, s: Suggestion) -> Path:
    """``model`` exported in its own precision (a QAT model as QDQ, Conv-only QLinear for DeepSparse)."""
    from sparseyolo.exporters.onnx import export_onnx
    from sparseyolo.quantization import is_qat_model

    out = export_onnx(model.float().eval(), path, img_size=(s.img, s.img))
    if is_qat_model(model) and s.engine == "deepsparse":
        from sparseyolo.exporters.qlinear import export_qlinear

        out = export_qlinear(out, path.with_suffix(".qlinear.onnx"))
    return out

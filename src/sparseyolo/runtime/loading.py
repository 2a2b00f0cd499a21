"""Load a torch model for analysis: a sparseyolo checkpoint (.pt) or Darknet weights (.weights + cfg)."""

from __future__ import annotations

from pathlib import Path

from sparseyolo.utils.errors import WeightsError


def load_torch_model(weights: str | Path, cfg: str | None = None, use_ema: bool = True):
    """(model in eval mode, checkpoint dict or None). ``.pt`` goes through ``load_checkpoint`` +
    ``model_from_checkpoint`` (QAT structure re-applied when the checkpoint says so)."""
    path = Path(weights)
    if path.suffix == ".pt":
        if not path.exists():
            raise WeightsError(f"{path}: no such file")
        from sparseyolo.models.checkpoint import load_checkpoint, model_from_checkpoint

        ckpt = load_checkpoint(path)
        model = model_from_checkpoint(ckpt, use_ema=use_ema)
        return model.float().eval(), ckpt
    from sparseyolo.models import load_model

    model, ckpt = load_model(weights, cfg=cfg)
    return model.float().eval(), ckpt

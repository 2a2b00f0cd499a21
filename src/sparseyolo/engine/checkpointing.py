"""Checkpoint hook, RNG state capture and ``--resume`` lookup."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparseyolo.engine.base import HookBase
from sparseyolo.engine.ddp import barrier
from sparseyolo.engine.ema import de_parallel
from sparseyolo.engine.setup import TrainConfig, merge_resume_config
from sparseyolo.utils.errors import WeightsError
from sparseyolo.utils.io import DiskFullError
from sparseyolo.utils.logging import LOGGER


# -- RNG state as plain tensors / lists (loads with torch.load(weights_only=True)) -------------
def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": int(version), "state": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any] | None) -> None:
    if not state:
        return
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def find_last_checkpoint(project: str | Path) -> Path:
    """The most recently written ``last.pt`` under ``project`` (for a bare ``--resume``)."""
    candidates = sorted(Path(project).glob("**/weights/last.pt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise WeightsError(f"--resume: no weights/last.pt found under {project}; pass the checkpoint path")
    return candidates[-1]


def resume_checkpoint(cfg: TrainConfig, given: set[str]) -> tuple[dict | None, TrainConfig]:
    """For ``--resume``: the checkpoint to continue from and the settings to continue with, or
    ``(None, cfg)`` for a new run. ``given``: the settings the command set (compared with the saved ones)."""
    if not cfg.resume:
        return None, cfg
    from sparseyolo.models.checkpoint import load_checkpoint

    path = find_last_checkpoint(cfg.project) if cfg.resume is True or cfg.resume == "" else Path(cfg.resume)
    ckpt = load_checkpoint(path)
    if not ckpt.get("train_args") or ckpt.get("optimizer") is None:
        raise WeightsError(
            f"{path}: this run already finished (or is not a training checkpoint); nothing "
            f"to resume. Start a new run with --weights {path}"
        )
    # the hardware and outputs may differ from the interrupted run; everything else continues as it
    # was, and a command that asks for another value is refused rather than silently overridden
    saved = merge_resume_config(TrainConfig.from_dict(ckpt["train_args"]), cfg, given, path)
    LOGGER.info(f"resuming {path} from epoch {ckpt['epoch'] + 2}")
    return ckpt, saved


def load_optimizer_state(optimizer: torch.optim.Optimizer, model: torch.nn.Module, state: dict, where: str) -> None:
    """A checkpoint's optimizer state, refused in one line (naming ``where``) when it does not fit ``model``."""
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, TypeError) as e:
        raise WeightsError(f"{where}: does not fit this model's optimizer: {e}") from None
    names = {id(p): n for n, p in de_parallel(model).named_parameters()}
    for p, buffers in optimizer.state.items():
        for key, value in buffers.items():
            if torch.is_tensor(value) and value.dim() > 0 and value.shape != p.shape:
                raise WeightsError(
                    f"{where}: {key} of {names.get(id(p), 'a parameter')} has shape "
                    f"{list(value.shape)} in the file, {list(p.shape)} in the model"
                )


class CheckpointDiskFullError(DiskFullError):
    """The disk filled up while a checkpoint was written: the run stops, the previous ``last.pt``
    is intact and the message says how to resume from it."""


class CheckpointHook(HookBase):
    """Writes ``weights/last.pt`` every epoch, ``best.pt`` when fitness improves, ``epochN.pt`` every
    ``save_period`` epochs; atomically, on rank 0, with barriers so no rank races ahead.

    ``last.pt`` is written after the others, so a write that fails (full disk) leaves it at the
    previous epoch, consistent with ``best.pt`` / ``epochN.pt``: resuming from it redoes the epoch.

    After a successful run the optimizer / scaler state is stripped from ``last.pt`` and ``best.pt``.
    A failed run leaves the last good checkpoint untouched.
    """

    def __init__(self, weights_dir: Path, save_period: int = -1, nosave: bool = False):
        self.dir = Path(weights_dir)
        self.last, self.best = self.dir / "last.pt", self.dir / "best.pt"
        self.save_period, self.nosave = save_period, nosave
        self._is_best = False

    def subscriptions(self) -> dict[str, Any]:
        return {"validated": self._on_validated}

    def _on_validated(self, metrics: dict, fitness: float | None, is_best: bool) -> None:
        self._is_best = is_best

    def before_epoch(self) -> None:
        self._is_best = False  # until this epoch's validation says otherwise

    def after_epoch(self) -> None:
        t = self.trainer
        final = t.epoch + 1 >= t.max_epochs or t.stop
        if t.dist.main and (not self.nosave or final):
            from sparseyolo.models.checkpoint import save_checkpoint

            fields = t.checkpoint_fields()
            targets = [self.best] if self._is_best else []
            if self.save_period > 0 and (t.epoch + 1) % self.save_period == 0:
                targets.append(self.dir / f"epoch{t.epoch + 1}.pt")
            for f in targets + [self.last]:  # last.pt last: see the class docstring
                try:
                    save_checkpoint(f, **fields)
                except DiskFullError as e:
                    raise self._disk_full(f, e) from e
        barrier(t.dist)

    def _disk_full(self, path: Path, e: DiskFullError) -> CheckpointDiskFullError:
        what = e.strerror or "no space left on device"
        if self.last.is_file():
            # the write was atomic: last.pt is the previous epoch's checkpoint, untouched
            hint = f"the previous checkpoint is intact: free some space and resume with --resume {self.last}"
        else:
            hint = f"no {self.last.name} had been saved yet: free some space and start the run again"
        return CheckpointDiskFullError(f"{what} while writing {path}; {hint}", path, e.errno)

    def after_train(self) -> None:
        t = self.trainer
        if t.failed or not t.dist.main:
            return
        from sparseyolo.models.checkpoint import load_checkpoint, save_checkpoint

        for f in (self.last, self.best):
            if f.exists():
                ckpt = load_checkpoint(f)
                ckpt.update(optimizer=None, scaler=None)
                try:
                    save_checkpoint(f, **ckpt)
                except DiskFullError as e:  # the run is done and f is whole; it just stays larger
                    LOGGER.warning(
                        f"{e.strerror} while stripping the optimizer state from {f}; the "
                        f"checkpoint is intact and keeps it"
                    )
                    continue
                LOGGER.info(f"optimizer state stripped from {f} ({f.stat().st_size / 1e6:.1f} MB)")


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in de_parallel(model).state_dict().items()}

"""What a training checkpoint holds and how a resumed run gets it back: the trainer's half of exact
``--resume`` (the rest is each hook's own ``state_dict``, gathered by ``hooks_state_dict``)."""

from __future__ import annotations

from typing import Any

import torch

from sparseyolo.engine.checkpointing import load_optimizer_state, rng_state, set_rng_state
from sparseyolo.engine.ema import de_parallel
from sparseyolo.utils.errors import WeightsError


class TrainerStateMixin:
    """Mixed into the :class:`~sparseyolo.engine.trainer.Trainer`; uses the model, optimizer, scaler,
    EMA, recipe, manager and eval hook it builds."""

    cfg: Any
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp: bool
    ema: Any
    recipe: Any
    manager: Any
    hyp: dict
    eval_hook: Any
    epoch: int
    start_epoch: int
    global_iter: int
    max_epochs: int
    batches_per_epoch: int
    img_size: int

    def checkpoint_fields(self) -> dict[str, Any]:
        bare = de_parallel(self.model)
        return dict(
            model_yaml=bare.yaml,
            names=list(bare.names),
            model=bare.state_dict(),
            ema=self.ema.ema.state_dict() if self.ema is not None else None,
            ema_updates=self.ema.updates if self.ema is not None else 0,
            optimizer=self.optimizer.state_dict(),
            scaler=self.scaler.state_dict() if self.amp else None,
            epoch=self.epoch,
            best_fitness=self.eval_hook.best_fitness,
            recipe=self.recipe.to_yaml() if self.recipe is not None else None,
            recipe_args=self.cfg.recipe_args or None,
            recipe_state=self.manager.state_dict() if self.manager is not None else None,
            train_args=self.config_dict(),
            hyp=dict(self.hyp),
            rng=rng_state(),
            metrics={k: float(v) for k, v in self.eval_hook.metrics.items() if isinstance(v, (int, float))} or None,
            trainer_state=self.hooks_state_dict(),  # extra key: every hook's state for --resume
        )

    def config_dict(self) -> dict[str, Any]:
        d = self.cfg.to_dict()
        d["img_size"] = self.img_size
        d["epochs"] = self.max_epochs
        return d

    def _restore(self, ckpt: dict) -> None:
        self.start_epoch = int(ckpt["epoch"]) + 1
        self.global_iter = self.start_epoch * self.batches_per_epoch
        load_optimizer_state(self.optimizer, self.model, ckpt["optimizer"], f"{self.cfg.resume} (optimizer)")
        if ckpt.get("scaler") and self.amp:
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None:
            if ckpt.get("ema") is not None:
                from sparseyolo.models.checkpoint import load_state

                load_state(self.ema.ema, ckpt["ema"], source=f"{self.cfg.resume} (ema)")
                self.ema.updates = int(ckpt.get("ema_updates") or 0)
            else:
                self.ema = None  # EMA had been turned off (QAT)
        self.load_hooks_state_dict(ckpt.get("trainer_state") or {})
        if self.eval_hook.best_fitness is None and ckpt.get("best_fitness") is not None:
            self.eval_hook.best_fitness = float(ckpt["best_fitness"])
        set_rng_state(ckpt.get("rng"))
        if self.start_epoch >= self.max_epochs:
            raise WeightsError(f"{self.cfg.resume}: all {self.max_epochs} epochs are done; nothing to resume")

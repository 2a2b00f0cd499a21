"""Training hooks: LR schedule, recipe manager, EMA, evaluation / model selection, early stopping.

Checkpointing and logging hooks live in :mod:`engine.checkpointing` and :mod:`engine.logger`.
"""

from __future__ import annotations

from typing import Any

from sparseyolo.engine.base import HookBase
from sparseyolo.engine.ddp import broadcast_buffers, broadcast_object
from sparseyolo.engine.optim import apply_lr, lr_lambda, warmup_iterations
from sparseyolo.utils.logging import LOGGER


class DDPBufferSyncHook(HookBase):
    """Under DDP, gives every rank rank 0's buffers at each epoch end (see ``broadcast_buffers``)."""

    def after_epoch(self) -> None:
        broadcast_buffers(self.trainer.model, self.trainer.dist)


class LRScheduleHook(HookBase):
    """Warm-up then linear / cosine decay to ``lr0 * lrf``, set before every batch.

    Stateless by design: the lr is a function of (global iteration, epoch), so a resumed run gets
    exactly the lr the uninterrupted run had. While the recipe's LR modifiers are in control
    (``manager.controls_lr``) only momentum is warmed up.
    """

    def __init__(self, hyp: dict[str, float], cos: bool = False):
        self.hyp, self.cos = hyp, cos

    def before_train(self) -> None:
        t = self.trainer
        self.lf = lr_lambda(t.max_epochs, self.hyp["lrf"], self.cos)
        self.nw = warmup_iterations(self.hyp["warmup_epochs"], t.batches_per_epoch)

    def before_step(self) -> None:
        t = self.trainer
        set_lr = not (t.manager is not None and t.manager.controls_lr)
        apply_lr(t.optimizer, self.hyp, t.global_iter, self.nw, t.epoch, self.lf, set_lr=set_lr)


class RecipeHook(HookBase):
    """Drives the SparseML-style recipe manager: ``manager.step()`` after each optimizer step, and
    relays the manager's phase events (``pruning_start``, ``pruning_end``, ``qat_start``,
    ``thinned``) onto ``trainer.events``, where the other hooks and the trainer subscribe."""

    RELAYED = ("pruning_start", "pruning_end", "qat_start", "thinned")

    def __init__(self, manager: Any):
        self.manager = manager

    def before_train(self) -> None:
        events = self.trainer.events
        for name in self.RELAYED:
            self.manager.subscribe(name, lambda _name=name, **info: events.emit(_name, **info))
        # phases reached when the manager was attached (QAT from epoch 0, or a resumed run) were
        # announced before anyone listened
        if self.manager.pruning_done:
            events.emit("pruning_end")
        if self.manager.qat_active:
            events.emit("qat_start")

    def after_step(self) -> None:
        if self.trainer.stepped:
            self.manager.step()

    def after_train(self) -> None:
        if not self.trainer.failed:
            self.manager.finalize()


class EMAHook(HookBase):
    """Updates the weight EMA after each optimizer step and keeps its pruned weights at zero; when
    the recipe thins the model, the EMA loses the same channels. At QAT start the EMA is dropped
    (as the seed did): an average of pre-QAT float weights would not match the quantized graph."""

    def subscriptions(self) -> dict[str, Any]:
        return {"thinned": self._thin, "qat_start": self._drop}

    def _thin(self, plan: Any) -> None:
        from sparseyolo.sparsity.thinning import apply_thinning

        if self.trainer.ema is not None:
            apply_thinning(self.trainer.ema.ema, plan)

    def _drop(self) -> None:
        if self.trainer.ema is not None:
            LOGGER.info("QAT: weight EMA turned off; checkpoints hold the live QAT model")
            self.trainer.ema = None

    def after_step(self) -> None:
        t = self.trainer
        if t.stepped and t.ema is not None:
            t.ema.update(t.model)
            if t.manager is not None:
                t.manager.apply_masks(t.ema.ema)


class EvalHook(HookBase):
    """Validates at the end of each epoch (rank 0), tracks the best fitness, early-stops.

    Best-model selection restarts (best fitness reset) when pruning first finishes and after the
    first epoch trained with QAT, so a denser or float model from before can never be chosen as
    ``best.pt``. A recipe's QAT starts at an epoch boundary, after the epoch's last step and before
    its validation: that validation runs with the quantizers bypassed (the model is still the float
    one it trained), so no activation range is ever taken from validation images.
    """

    def __init__(self, evaluate, noval: bool = False, patience: int = 0):
        self.evaluate = evaluate  # callable(final: bool) -> (metrics dict, fitness float)
        self.noval, self.patience = noval, patience
        self.best_fitness: float | None = None
        self.best_epoch = -1
        self.is_best = False
        self.metrics: dict[str, float] = {}
        self._pruning_done_seen = False
        self._qat_seen = False
        self._pruning_ended = False  # the recipe announced the end of pruning
        self._qat_on = False  # the recipe announced QAT
        self._qat_trained = False  # QAT was on when the current epoch started

    def subscriptions(self) -> dict[str, Any]:
        return {"pruning_end": self._on_pruning_end, "qat_start": self._on_qat_start}

    def _on_pruning_end(self) -> None:
        self._pruning_ended = True

    def _on_qat_start(self) -> None:
        self._qat_on = True

    def before_epoch(self) -> None:
        self._qat_trained = self._qat_on

    def _restart_selection(self) -> None:
        if self._pruning_ended and not self._pruning_done_seen:
            self._pruning_done_seen = True
            LOGGER.info("pruning finished: best.pt is chosen among the pruned models from now on")
            self.best_fitness, self.best_epoch = None, -1
        if self._qat_trained and not self._qat_seen:
            self._qat_seen = True
            LOGGER.info("QAT started: best.pt is chosen among the quantization-aware models from now on")
            self.best_fitness, self.best_epoch = None, -1

    def after_epoch(self) -> None:
        t = self.trainer
        final = t.epoch + 1 >= t.max_epochs
        self.is_best = False
        self._restart_selection()
        stop = False
        if t.dist.main:
            if not self.noval or final:
                self.metrics, fi = self._evaluate_epoch(final)
            else:
                self.metrics, fi = {}, None
            if fi is not None and (self.best_fitness is None or fi >= self.best_fitness):
                self.best_fitness, self.best_epoch, self.is_best = fi, t.epoch, True
            if fi is None and self.noval:
                self.is_best = True  # without validation the latest model is the best we know
            t.events.emit("validated", metrics=self.metrics, fitness=fi, is_best=self.is_best)
            if self.patience > 0 and self.best_epoch >= 0 and t.epoch - self.best_epoch >= self.patience:
                LOGGER.info(
                    f"early stopping: no improvement in the last {self.patience} epochs; best was "
                    f"epoch {self.best_epoch + 1}. Change --patience to train longer."
                )
                stop = True
        t.stop = bool(broadcast_object(stop, t.dist)) or t.stop

    def _evaluate_epoch(self, final: bool):
        if not self._qat_on or self._qat_trained:
            return self.evaluate(final)
        from sparseyolo.quantization import quantizers_bypassed

        LOGGER.info(
            "QAT starts with the next epoch: this epoch's (float) model is validated with the " "quantizers bypassed"
        )
        with quantizers_bypassed(self.trainer.model):
            return self.evaluate(final)

    def after_train(self) -> None:
        """Like YOLOv5: when best.pt is not the final model, validate it once more with plots so
        the curves and confusion matrix in the run folder describe the model you will deploy."""
        t = self.trainer
        if t.failed or not t.dist.main or self.noval or self.best_epoch < 0 or self.best_epoch == t.epoch:
            return
        t.evaluate_best()

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_fitness": self.best_fitness,
            "best_epoch": self.best_epoch,
            "pruning_done_seen": self._pruning_done_seen,
            "qat_seen": self._qat_seen,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_fitness = state.get("best_fitness")
        self.best_epoch = int(state.get("best_epoch", -1))
        self._pruning_done_seen = bool(state.get("pruning_done_seen", False))
        self._qat_seen = bool(state.get("qat_seen", False))

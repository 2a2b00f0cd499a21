"""A small epoch-based trainer skeleton: the loop plus hooks (detectron2's ``TrainerBase`` idea).

The trainer owns the loop; LR schedule, EMA, the recipe manager, evaluation, checkpointing and
logging are hooks. A hook may keep state through ``state_dict()`` / ``load_state_dict()``; the
trainer gathers them by hook class name so that a resumed run restores every schedule.

Hooks never call each other. What one hook learns that others need travels as an event on the
trainer's one :class:`EventBus` (``trainer.events``), to which a hook subscribes by returning
``{event: callback}`` from :meth:`HookBase.subscriptions`:

- ``pruning_start``, ``pruning_end``, ``qat_start``: the recipe's phases (no info);
- ``thinned``: pruned channels were cut out of the model (``plan``: the ``ThinningPlan``);
- ``validated``: an epoch was validated (``metrics``, ``fitness``, ``is_best``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from sparseyolo.utils.events import EventBus

TRAINER_EVENTS = ("pruning_start", "pruning_end", "qat_start", "thinned", "validated")


class HookBase:
    """Override any of the six callbacks; ``self.trainer`` is set by :meth:`TrainerBase.register_hooks`.

    ``before_step`` should stay cheap; expensive work belongs in ``after_step`` / ``after_epoch``.
    ``after_train`` runs in a ``finally``: check ``self.trainer.failed`` before writing results.
    """

    trainer: TrainerBase

    def subscriptions(self) -> dict[str, Callable[..., None]]:
        """``{event: callback}`` to subscribe on ``trainer.events`` when the hook is registered."""
        return {}

    def before_train(self) -> None: ...
    def before_epoch(self) -> None: ...
    def before_step(self) -> None: ...
    def after_step(self) -> None: ...
    def after_epoch(self) -> None: ...
    def after_train(self) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class TrainerBase:
    """``before_train``; per epoch ``before_epoch``, per batch ``before_step / run_step / after_step``,
    ``after_epoch``; ``after_train`` in a ``finally``.

    Subclasses implement :meth:`run_step` and :meth:`batches`. Hooks may set ``self.stop = True``
    (e.g. early stopping) to end training after the current epoch.
    """

    def __init__(self) -> None:
        self._hooks: list[HookBase] = []
        self.epoch = 0
        self.start_epoch = 0
        self.max_epochs = 0
        self.iter = 0  # batch index within the epoch
        self.global_iter = 0  # batches seen since the start of training (across resumes)
        self.stop = False
        self.failed = False
        self.events = EventBus(TRAINER_EVENTS, owner="trainer event")
        self.manager: Any = None  # the recipe manager, when a recipe drives training

    @property
    def phase(self) -> str:
        """The recipe's phase (``training``, ``pruning``, ``pruned``, ``qat``, ``done``); ``training``
        without a recipe."""
        return self.manager.phase if self.manager is not None else "training"

    def register_hooks(self, hooks: Iterable[HookBase | None]) -> None:
        for h in hooks:
            if h is None:
                continue
            h.trainer = self
            self._hooks.append(h)
            for event, callback in h.subscriptions().items():
                self.events.subscribe(event, callback)

    def hook(self, cls: type) -> Any:
        """The registered hook of type ``cls`` or None."""
        return next((h for h in self._hooks if isinstance(h, cls)), None)

    def epoch_skipped_images(self) -> list[str]:
        """Images the data loader had to skip this epoch (a collective call under DDP)."""
        return []

    def batches(self) -> Iterable[Any]:
        raise NotImplementedError

    def run_step(self) -> None:
        raise NotImplementedError

    def train(self) -> None:
        self.failed = True  # until the loop completes
        try:
            self._call("before_train")
            for epoch in range(self.start_epoch, self.max_epochs):
                self.epoch = epoch
                self._call("before_epoch")
                for i, batch in enumerate(self.batches()):
                    self.iter, self.batch = i, batch
                    self._call("before_step")
                    self.run_step()
                    self._call("after_step")
                    self.global_iter += 1
                self._call("after_epoch")
                if self.stop:
                    break
            self.failed = False
        finally:
            self._call("after_train")

    def _call(self, name: str) -> None:
        for h in self._hooks:
            getattr(h, name)()

    def hooks_state_dict(self) -> dict[str, dict]:
        return {type(h).__name__: s for h in self._hooks if (s := h.state_dict())}

    def load_hooks_state_dict(self, state: dict[str, dict]) -> None:
        for h in self._hooks:
            if type(h).__name__ in state:
                h.load_state_dict(state[type(h).__name__])

"""What :func:`~sparseyolo.analysis.recipe_check.check_recipe` returns: the modifiers, one row per
epoch, the events, and the end state (``RecipeCheck.to_dict()`` is what ``--json`` writes)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ModifierInfo:
    """One modifier of the recipe and what it matched on the model."""

    index: int  # 1-based, in recipe order
    tag: str
    where: str  # file:line
    start_epoch: float | None
    end_epoch: float | None
    group: str | None  # "P1", "P2", ... for pruning modifiers (the columns of the schedule)
    matched: int  # how many params / parameter groups / submodules / layers it acts on
    kind: str  # what ``matched`` counts
    names: list[str] = field(default_factory=list)
    numel: int | None = None  # elements of the matched parameters
    settings: str = ""  # one line: the schedule and values that matter


@dataclass
class EpochRow:
    """The state the manager leaves for epoch ``epoch`` (after its first step's update); the last row
    (``epoch == epochs``) is the state at the end of training."""

    epoch: int
    phase: str  # training | pruning | pruned | qat (a thinned model counts as pruned)
    manager_phase: str  # RecipeManager.phase as is
    lr: list[float | None]  # per optimizer parameter group; None: not set by the recipe
    weight_decay: list[float | None]
    targets: dict[str, float | None]  # pruning group -> target sparsity applied at the last update
    events: list[str] = field(default_factory=list)  # what happened during this epoch


@dataclass
class CheckEvent:
    epoch: float
    step: int
    event: str  # pruning_start | pruning_end | thinned | qat_start | bn_frozen | observers_disabled
    detail: str = ""


@dataclass
class RecipeCheck:
    """The outcome of :func:`check_recipe` (``to_dict()`` is what ``--json`` writes)."""

    recipe: str
    recipe_args: dict[str, Any]
    model: str
    params: int
    recipe_epochs: int  # what train runs (the recipe's largest epoch, rounded up)
    epochs: int  # how many the dry run stepped through
    steps_per_epoch: int
    steps_per_epoch_assumed: bool
    steps_per_epoch_run: int  # fewer than steps_per_epoch when epochs * steps_per_epoch > max_steps
    total_steps: int  # steps run: epochs * steps_per_epoch_run
    masks: str  # how magnitude masks were made: "counted", "by magnitude" or "counted; P2 by magnitude"
    img: tuple[int, int]
    param_groups: list[str]
    modifiers: list[ModifierInfo]
    rows: list[EpochRow]
    events: list[CheckEvent]
    qat: dict[str, Any] | None
    thinning: list[dict[str, Any]]
    final: dict[str, Any]
    flops: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def groups(self) -> list[str]:
        return [m.group for m in self.modifiers if m.group]

    @property
    def sets_lr(self) -> bool:
        return any(v is not None for r in self.rows for v in r.lr)

    @property
    def sets_weight_decay(self) -> bool:
        return any(v is not None for r in self.rows for v in r.weight_decay)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["img"] = list(self.img)
        return d

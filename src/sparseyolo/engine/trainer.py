"""The detection trainer: setup, one training step, and the hooks that do everything else.

Usage::

    from sparseyolo.engine import TrainConfig, train
    save_dir = train(TrainConfig(weights="yolov3-tiny.weights", data="voc.yaml", img_size=416, epochs=50))
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import yaml

from sparseyolo.engine.base import TrainerBase
from sparseyolo.engine.checkpointing import (
    CheckpointHook,
    resume_checkpoint,
    seed_all,
)
from sparseyolo.engine.ddp import (
    any_rank,
    barrier,
    broadcast_object,
    broadcast_state,
    cleanup,
    dist_info,
    init_distributed,
    select_device,
    wrap_ddp,
)
from sparseyolo.engine.ema import ModelEMA, de_parallel
from sparseyolo.engine.hooks import DDPBufferSyncHook, EMAHook, EvalHook, LRScheduleHook, RecipeHook
from sparseyolo.engine.hyp import load_hyp
from sparseyolo.engine.loaders import build_loaders
from sparseyolo.engine.logger import LoggerHook, progress_header
from sparseyolo.engine.loss import YoloLoss
from sparseyolo.engine.optim import accumulate_steps, build_optimizer, scaled_weight_decay
from sparseyolo.engine.setup import (
    TrainConfig,
    attach_recipe,
    build_train_model,
    check_img_size,
    freeze_layers,
    given_fields,
    nominal_batch,
)
from sparseyolo.engine.trainer_state import TrainerStateMixin
from sparseyolo.utils.errors import SparseYoloError
from sparseyolo.utils.io import atomic_write_text, increment_path
from sparseyolo.utils.logging import LOGGER

GRAD_CLIP = 10.0  # max gradient norm; guards the first iterations of scratch runs


class NonFiniteLossError(SparseYoloError):
    """Training produced a NaN / inf loss; the run stops and keeps its last good checkpoint."""


class Trainer(TrainerStateMixin, TrainerBase):
    """Builds model, data, optimizer, loss, EMA, recipe manager and hooks from a :class:`TrainConfig`."""

    def __init__(self, cfg: TrainConfig, given: Iterable[str] | None = None):
        """``given``: the settings the caller actually set (the CLI's flags); a resumed run compares
        them with the saved ones. None: every field that differs from its default counts as given."""
        super().__init__()
        cfg.check()
        resume_ckpt, cfg = resume_checkpoint(cfg, given_fields(cfg) if given is None else set(given))
        self.dist = dist_info()
        self.device = select_device(cfg.device, self.dist)
        init_distributed(self.dist, self.device)
        self.cfg, self.resumed = cfg, resume_ckpt is not None
        self.pbar = None
        self.skipped_images: dict[str, None] = {}
        self.stepped = False
        self.loss_items = torch.zeros(3)
        self.hyp = load_hyp(resume_ckpt["hyp"] if resume_ckpt and resume_ckpt.get("hyp") else cfg.hyp)
        # parsed before the data scan and model build so that a recipe mistake fails at once
        self.recipe = self._load_recipe(resume_ckpt)
        seed_all(cfg.seed + max(self.dist.rank, 0))
        self._setup_model(resume_ckpt)
        self._setup_data()
        self._setup_optimization(resume_ckpt)
        # only once the config is known to be good: a failed start leaves no empty run folder behind
        self._setup_dirs(resume_ckpt)
        self._register_default_hooks()
        if resume_ckpt is not None:
            self._restore(resume_ckpt)
        if self.dist.main:
            atomic_write_text(self.save_dir / "hyp.yaml", yaml.safe_dump(self.hyp, sort_keys=False))
            atomic_write_text(self.save_dir / "opt.yaml", yaml.safe_dump(self.config_dict(), sort_keys=False))

    # -- setup ------------------------------------------------------------------------------------
    def _load_recipe(self, ckpt: dict | None):
        """The resumed run's own recipe (stored in its checkpoint), else ``--recipe``, else None."""
        recipe_text = ckpt.get("recipe") if ckpt else None
        if not (recipe_text or self.cfg.recipe):
            return None
        from sparseyolo.recipe import Recipe

        if recipe_text:
            return Recipe.load(recipe_text)
        return Recipe.load(self.cfg.recipe, self.cfg.recipe_args or None)

    def _setup_dirs(self, ckpt: dict | None) -> None:
        if ckpt is not None:
            save_dir = Path(self.cfg.resume).resolve().parent.parent
        elif self.dist.main:
            save_dir = increment_path(Path(self.cfg.project) / self.cfg.name, exist_ok=self.cfg.exist_ok)
        else:
            save_dir = None
        self.save_dir = Path(broadcast_object(str(save_dir) if save_dir else None, self.dist))
        self.weights_dir = self.save_dir / "weights"
        if self.dist.main:
            self.weights_dir.mkdir(parents=True, exist_ok=True)
            # a run killed while writing a checkpoint leaves its temporary file behind (the
            # checkpoint itself is intact: writes are atomic); a resumed run clears them
            for stale in self.weights_dir.glob(".*.tmp"):
                LOGGER.info(f"removing {stale.name}, left by an interrupted checkpoint write")
                stale.unlink()

    def _setup_model(self, ckpt: dict | None) -> None:
        from sparseyolo.data.config import load_data_config

        cfg = self.cfg
        self.data = load_data_config(cfg.data)
        nc, names = int(self.data["nc"]), list(self.data["names"])
        if ckpt is not None:
            from sparseyolo.models.checkpoint import model_from_checkpoint

            model = model_from_checkpoint(ckpt, use_ema=False)
        else:
            model, _ = build_train_model(cfg, nc, names)
        freeze_layers(model, cfg.freeze)
        self.model = model.to(self.device)
        broadcast_state(self.model, self.dist)  # before a recipe masks anything
        self.max_stride = int(max(int(model.stride.max()), 32))
        self.img_size = check_img_size(cfg.img_size, self.max_stride)
        if cfg.sync_bn and self.dist.distributed and self.device.type == "cuda":
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            if self.dist.main:
                LOGGER.info("using SyncBatchNorm")
        elif cfg.sync_bn and self.dist.main:
            LOGGER.warning("--sync-bn needs DDP on CUDA (torchrun with GPUs); ignored")

    def _setup_data(self) -> None:
        self.train_loader, self.train_dataset, self.val_loader = build_loaders(
            self.cfg, self.data, self.img_size, self.max_stride, self.hyp, self.dist
        )
        self.batches_per_epoch = len(self.train_loader)

    def _setup_optimization(self, ckpt: dict | None) -> None:
        cfg, hyp = self.cfg, self.hyp
        batch = cfg.batch_size
        nbs = nominal_batch(cfg, self.recipe is not None, log=self.dist.main)
        self.accumulate = accumulate_steps(batch, nbs)
        wd = scaled_weight_decay(hyp["weight_decay"], batch, self.accumulate, nbs)
        self.optimizer = build_optimizer(self.model, cfg.optimizer, hyp["lr0"], hyp["momentum"], wd)
        self.loss_fn = YoloLoss(self.model, hyp, self.img_size, cfg.label_smoothing)
        self.amp = bool(cfg.amp and self.device.type == "cuda")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.manager = None
        self.max_epochs = cfg.epochs
        if self.recipe is not None:
            self.manager = attach_recipe(
                self.recipe,
                self.model,
                self.optimizer,
                cfg,
                state=ckpt.get("recipe_state") if ckpt is not None else None,
                batches_per_epoch=self.batches_per_epoch,
                accumulate=self.accumulate,
                device=self.device,
                log=self.dist.main,
            )
            self.max_epochs = int(math.ceil(self.manager.max_epochs))
        self.ema = ModelEMA(self.model) if self.dist.main else None
        if self.dist.distributed:
            self.model = wrap_ddp(self.model, self.device)

    def _register_default_hooks(self) -> None:
        cfg = self.cfg
        self.events.subscribe("thinned", self._on_thinned)
        self.events.subscribe("qat_start", self._on_qat_start)
        self.eval_hook = EvalHook(self._evaluate, noval=cfg.noval or self.val_loader is None, patience=cfg.patience)
        self.register_hooks(
            [
                LRScheduleHook(self.hyp, cos=cfg.cos_lr),
                RecipeHook(self.manager) if self.manager is not None else None,
                EMAHook(),
                DDPBufferSyncHook() if self.dist.distributed else None,
                self.eval_hook,
                LoggerHook(
                    self.save_dir,
                    list(de_parallel(self.model).names),
                    tensorboard=cfg.tensorboard,
                    wandb=cfg.wandb,
                    plots=not cfg.noplots,
                    run_name=self.save_dir.name,
                ),
                CheckpointHook(self.weights_dir, save_period=cfg.save_period, nosave=cfg.nosave),
            ]
        )

    # -- the loop ---------------------------------------------------------------------------------
    def batches(self):
        epoch_seed = self.cfg.seed + 1_000_003 * self.epoch + max(self.dist.rank, 0)
        seed_all(epoch_seed)  # each epoch's randomness depends only on (seed, epoch, rank): exact resume
        if getattr(self.train_loader, "generator", None) is not None:
            self.train_loader.generator.manual_seed(epoch_seed)
        # the data: the loader's EpochSampler derives the order and each sample's augmentation seed
        # from (seed, epoch, index), so persistent workers (an uninterrupted run) and fresh ones (a
        # resumed run), with any worker count, make the same batches
        if hasattr(self.train_loader.sampler, "set_epoch"):
            self.train_loader.sampler.set_epoch(self.epoch)
        self.skipped_images: dict[str, None] = {}  # images that could not be read this epoch, in order
        self.model.train()
        if not self.dist.main:
            return self.train_loader
        from tqdm import tqdm

        LOGGER.info("\n" + progress_header())
        self.pbar = tqdm(self.train_loader, total=self.batches_per_epoch, bar_format="{l_bar}{bar:10}{r_bar}")
        return self.pbar

    def run_step(self) -> None:
        self.skipped_images.update(dict.fromkeys(getattr(self.batch, "skipped", ())))
        imgs, targets = self.batch[0], self.batch[1]
        imgs = imgs.to(self.device, non_blocking=True).float() / 255
        targets = targets.to(self.device)
        last_micro = (self.iter + 1) % self.accumulate == 0 or self.iter + 1 == self.batches_per_epoch
        # DDP: all-reduce gradients only on the micro-batch that steps the optimizer
        sync = self.model.no_sync() if (self.dist.distributed and not last_micro) else contextlib.nullcontext()
        with sync:
            with torch.autocast(self.device.type, enabled=self.amp):
                preds = self.model(imgs)
                loss, items = self.loss_fn(preds, targets)
                if self.manager is not None and self.manager.distillation is not None:
                    loss = self.manager.loss_update(loss, preds, self._teacher_outputs(imgs))
            if any_rank(not bool(torch.isfinite(loss).all()), self.dist, self.device):
                self._non_finite(items)
            if self.dist.distributed:
                loss = loss * self.dist.world_size  # DDP averages gradients across ranks
            self.scaler.scale(loss).backward()
        self.stepped = False
        if last_micro:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=GRAD_CLIP)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.stepped = True
        self.loss_items = items

    @torch.no_grad()
    def _teacher_outputs(self, imgs: torch.Tensor) -> Any:
        out = self.manager.teacher(imgs)
        return out[1] if isinstance(out, tuple) else out  # eval mode: (decoded, raw); raw is what trains

    def epoch_skipped_images(self) -> list[str]:
        """The training images that could not be read this epoch (replaced by others), all ranks."""
        paths = list(self.skipped_images)
        if self.dist.distributed:
            gathered: list = [None] * self.dist.world_size
            torch.distributed.all_gather_object(gathered, paths)
            paths = list(dict.fromkeys(p for rank_paths in gathered for p in rank_paths))
        return paths

    def _non_finite(self, items: torch.Tensor) -> None:
        last = self.weights_dir / "last.pt"
        keep = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written yet"
        box, obj, cls = (float(v) for v in items.float().cpu())
        raise NonFiniteLossError(
            f"non-finite loss at epoch {self.epoch + 1}, batch {self.iter} (box {box:.4g}, obj {obj:.4g}, "
            f"cls {cls:.4g}); training stopped and {keep}. Usual causes: a learning rate too high for this "
            f"batch size (--hyp lr0), or broken labels."
        )

    def _on_thinned(self, plan) -> None:
        """The recipe cut pruned channels out of the model (``thinned`` event): the
        model's config records the new widths (checkpoints rebuild them), and DDP, whose gradient
        buckets hold the old parameters, is wrapped anew."""
        bare = de_parallel(self.model)
        bare.record_widths()
        if self.dist.distributed:
            self.model = wrap_ddp(bare, self.device)
        if self.dist.main:
            LOGGER.info(
                f"thinned model: {sum(p.numel() for p in bare.parameters()):,} parameters, "
                f"{bare.flops(self.img_size):.2f} GFLOPs at {self.img_size}"
            )

    def _on_qat_start(self) -> None:
        """The recipe's quantization-aware training begins (``qat_start`` event)."""
        if self.amp:
            LOGGER.info("QAT: mixed precision turned off (fake-quant observers need fp32)")
            self.amp = False
            self.scaler = torch.amp.GradScaler("cuda", enabled=False)

    def _evaluate(self, final: bool) -> tuple[dict, float | None]:
        from sparseyolo.evaluation.metrics import fitness
        from sparseyolo.evaluation.validation import validate

        if self.val_loader is None:
            return {}, None
        model = self.ema.ema if self.ema is not None else de_parallel(self.model)
        plots = final and not self.cfg.noplots
        # half=False: the backend converts the module in place, and this is the live EMA / model
        metrics, _ = validate(
            model,
            self.val_loader,
            names=list(de_parallel(self.model).names),
            plots=plots,
            save_dir=self.save_dir,
            compute_loss=self.loss_fn,
            verbose=final,
        )
        return metrics, fitness(metrics)

    def evaluate_best(self) -> None:
        from sparseyolo.models.checkpoint import load_checkpoint, model_from_checkpoint

        best = self.weights_dir / "best.pt"
        if self.cfg.nosave or not best.exists() or self.val_loader is None:
            return
        LOGGER.info(f"\nvalidating {best} (epoch {self.eval_hook.best_epoch + 1}):")
        model = model_from_checkpoint(load_checkpoint(best)).to(self.device)
        from sparseyolo.evaluation.validation import validate

        validate(
            model,
            self.val_loader,
            names=list(model.names),
            plots=not self.cfg.noplots,
            save_dir=self.save_dir,
            verbose=True,
        )

    def train(self) -> Path:  # type: ignore[override]
        try:
            LOGGER.info(
                f"training {self.max_epochs - self.start_epoch} epochs, {self.batches_per_epoch} batches "
                f"each (optimizer step every {self.accumulate}), img {self.img_size}, "
                f"device {self.device}{', AMP' if self.amp else ''}; results to {self.save_dir}"
            )
            super().train()
            barrier(self.dist)
        finally:
            cleanup(self.dist)
        if self.dist.main:
            LOGGER.info(f"results saved to {self.save_dir}")
        return self.save_dir


def train(config: TrainConfig | None = None, *, given: Iterable[str] | None = None, **kwargs) -> Path:
    """Train and return the run folder (``runs/train/expN``); ``kwargs`` override ``config`` fields,
    e.g. ``train(cfg="yolov3-tiny", data="voc.yaml", epochs=50)``.

    ``given`` names the settings the caller set (the CLI passes the flags on its command line); by
    default those are ``kwargs`` plus the fields of ``config`` that differ from their defaults. On
    ``resume`` only they are compared with the run's saved settings (see ``merge_resume_config``)."""
    unknown = set(kwargs) - set(TrainConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"train() got unknown options {sorted(unknown)}")
    cfg = TrainConfig.from_dict({**(config.to_dict() if config else {}), **kwargs})
    if given is None:
        given = set(kwargs) | (given_fields(config) if config else set())
    return Trainer(cfg, given=given).train()

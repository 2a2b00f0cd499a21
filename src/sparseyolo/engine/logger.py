"""Logging hook: tqdm bar, results.csv, TensorBoard, optional Weights & Biases, batch plots."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

import torch

from sparseyolo.engine.base import HookBase
from sparseyolo.utils.io import atomic_write_text
from sparseyolo.utils.logging import LOGGER

RESULT_KEYS = (
    "train/box_loss",
    "train/obj_loss",
    "train/cls_loss",
    "metrics/precision",
    "metrics/recall",
    "metrics/mAP_0.5",
    "metrics/mAP_0.5:0.95",
    "val/box_loss",
    "val/obj_loss",
    "val/cls_loss",
    "x/lr0",
    "x/lr1",
    "x/lr2",
)


def progress_header() -> str:
    return ("%11s" * 7) % ("Epoch", "GPU_mem", "box_loss", "obj_loss", "cls_loss", "Instances", "Size")


class LoggerHook(HookBase):
    """Rank-0 logging. ``results.csv`` is rewritten atomically each epoch (never half a row)."""

    def __init__(
        self,
        save_dir: Path,
        names: list[str],
        tensorboard: bool = True,
        wandb: bool = False,
        plots: bool = True,
        run_name: str = "exp",
    ):
        self._metrics: dict[str, Any] = {}  # the last ``validated`` event's metrics
        self.save_dir = Path(save_dir)
        self.csv = self.save_dir / "results.csv"
        self.names, self.plots = names, plots
        self.tb = None
        self.wandb = None
        self._want_tb, self._want_wandb, self._run_name = tensorboard, wandb, run_name
        self.mloss = torch.zeros(3)
        self.rows: list[list[str]] = []

    # -- lifecycle -----------------------------------------------------------------------------
    def before_train(self) -> None:
        t = self.trainer
        if not t.dist.main:
            return
        if self.csv.exists():  # resumed run: keep the epochs already logged
            with open(self.csv, newline="") as f:
                rows = [r for r in csv.reader(f) if r][1:]
            self.rows = [r for r in rows if int(float(r[0])) < t.start_epoch]
        if self._want_tb:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(self.save_dir))
                LOGGER.info(f"TensorBoard: tensorboard --logdir {self.save_dir.parent}")
            except ImportError:
                LOGGER.info("TensorBoard not installed; pip install tensorboard to log there")
        if self._want_wandb:
            try:
                import wandb  # optional: pip install sparseyolo[wandb]

                # a resumed run continues its W&B run: the id is kept next to results.csv (without it,
                # resume="allow" made a new W&B run each time)
                id_file = self.save_dir / "wandb_id.txt"
                run_id = id_file.read_text().strip() if t.start_epoch > 0 and id_file.exists() else ""
                self.wandb = wandb.init(
                    project=self.save_dir.parent.name,
                    name=self._run_name,
                    id=run_id or None,  # None: a new W&B run
                    dir=os.environ.get("WANDB_DIR") or str(self.save_dir),  # the user's WANDB_DIR wins
                    config=t.config_dict(),
                    resume="allow",
                )
                atomic_write_text(id_file, self.wandb.id + "\n")
            except ImportError:
                LOGGER.warning("--wandb: wandb is not installed (pip install 'sparseyolo[wandb]'); training without it")
            except Exception as e:  # no API key, no network, ...: W&B never stops training
                LOGGER.warning(f"--wandb: wandb.init failed ({type(e).__name__}: {e}); training without W&B")
                self.wandb = None
        if self.plots and t.start_epoch == 0:
            labels = getattr(t.train_dataset, "labels", None)
            if labels is not None and len(labels):
                try:
                    from sparseyolo.evaluation.plots import plot_labels

                    arr = torch.cat([torch.as_tensor(lb, dtype=torch.float32).reshape(-1, 5) for lb in labels], 0)
                    plot_labels(arr, self.names, self.save_dir)
                except Exception as e:  # plots never stop training
                    LOGGER.warning(f"labels plot failed: {e}")

    def before_epoch(self) -> None:
        self.mloss = torch.zeros(3)

    def after_step(self) -> None:
        t = self.trainer
        if not t.dist.main:
            return
        i = t.iter
        self.mloss = (self.mloss * i + t.loss_items.cpu().float()) / (i + 1)
        if t.pbar is not None:
            mem = f"{torch.cuda.memory_reserved() / 1e9:.3g}G" if t.device.type == "cuda" else "0G"
            targets = t.batch[1]
            t.pbar.set_description(
                ("%11s" * 2 + "%11.4g" * 5)
                % (f"{t.epoch + 1}/{t.max_epochs}", mem, *self.mloss.tolist(), targets.shape[0], t.batch[0].shape[-1])
            )
        if self.plots and t.epoch == t.start_epoch and i < 3 and t.start_epoch == 0:
            try:
                from sparseyolo.evaluation.plots import plot_images

                plot_images(t.batch[0], t.batch[1], t.batch[2], self.save_dir / f"train_batch{i}.jpg", self.names)
            except Exception as e:
                LOGGER.warning(f"train batch plot failed: {e}")

    def subscriptions(self) -> dict[str, Any]:
        return {"validated": self._on_validated}

    def _on_validated(self, metrics: dict, fitness: float | None, is_best: bool) -> None:
        self._metrics = metrics

    def after_epoch(self) -> None:
        t = self.trainer
        skipped = t.epoch_skipped_images()  # every rank joins
        if not t.dist.main:
            return
        if skipped:  # each was replaced by the next readable image
            more = f" and {len(skipped) - 10} more" if len(skipped) > 10 else ""
            LOGGER.warning(
                f"epoch {t.epoch + 1}: skipped {len(skipped)} unreadable image{'s' * (len(skipped) > 1)}: "
                f"{', '.join(skipped[:10])}{more}"
            )
        m, self._metrics = self._metrics, {}
        lrs = [g["lr"] for g in t.optimizer.param_groups][:3]
        values = [
            *self.mloss.tolist(),
            m.get("precision", float("nan")),
            m.get("recall", float("nan")),
            m.get("mAP50", float("nan")),
            m.get("mAP50-95", float("nan")),
            *(m.get(k, float("nan")) for k in ("box_loss", "obj_loss", "cls_loss")),
            *lrs,
        ]
        values += [float("nan")] * (len(RESULT_KEYS) - len(values))
        self.rows.append([str(t.epoch)] + [f"{v:.5g}" for v in values])
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["epoch", *RESULT_KEYS])
        w.writerows(self.rows)
        atomic_write_text(self.csv, buf.getvalue())
        record = dict(zip(RESULT_KEYS, values, strict=False))
        if self.tb is not None:
            for k, v in record.items():
                if v == v:  # skip NaN (no validation this epoch)
                    self.tb.add_scalar(k, v, t.epoch)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if v == v} | {"epoch": t.epoch})

    def after_train(self) -> None:
        t = self.trainer
        if not t.dist.main:
            return
        if self.plots and self.csv.exists() and not t.failed:
            try:
                from sparseyolo.evaluation.plots import plot_results

                plot_results(self.csv)
            except Exception as e:
                LOGGER.warning(f"results plot failed: {e}")
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish(exit_code=1 if t.failed else 0)  # a failed run shows as failed in W&B

    def state_dict(self) -> dict[str, Any]:
        return {}

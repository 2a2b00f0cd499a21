"""Resume is exact with loader workers and a pruning recipe; resume refuses changed settings; an image
that becomes unreadable mid-run is skipped and named in the epoch log."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from conftest import stop_after_epoch

from sparseyolo.engine.base import HookBase
from sparseyolo.engine.setup import TrainConfig
from sparseyolo.engine.trainer import Trainer, train

# unstructured GMP to 0.8 by epoch 2, then a cosine LR decay: the reported recipe, scaled down
RECIPE = """
modifiers:
  - !EpochRangeModifier {start_epoch: 0, end_epoch: 4}
  - !GMPruningModifier {params: __ALL_PRUNABLE__, init_sparsity: 0.05, final_sparsity: 0.8,
                        start_epoch: 0, end_epoch: 2, update_frequency: 0.5}
  - !LearningRateFunctionModifier {start_epoch: 2, end_epoch: 4, lr_func: cosine, init_lr: 0.01,
                                   final_lr: 0.001}
"""


@pytest.fixture(scope="module")
def shapes(shapes_data) -> dict:
    (shapes_data["root"] / "recipe.yaml").write_text(RECIPE)
    return {**shapes_data, "recipe": str(shapes_data["root"] / "recipe.yaml")}


def _common(shapes: dict, project: Path, **kw) -> dict:
    return {
        **dict(
            cfg=shapes["cfg"],
            data=shapes["data"],
            project=str(project),
            img_size=64,
            batch_size=2,
            nbs=4,
            workers=2,
            seed=0,
            device="cpu",
            noval=True,
            noplots=True,
            tensorboard=False,
        ),
        **kw,
    }


def _load(path: Path) -> dict:
    from sparseyolo.models.checkpoint import load_checkpoint

    return load_checkpoint(path)


def _same(a, b) -> bool:
    """Equal, tensors bit for bit, through nested dicts and lists."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=False))
    return a == b


def _cut_run(common: dict, name: str, stop: int) -> Path:
    t = Trainer(TrainConfig(name=name, **common))
    t.register_hooks([stop_after_epoch(stop)])
    with pytest.raises(KeyboardInterrupt):
        t.train()
    last = Path(common["project"]) / name / "weights/last.pt"
    assert _load(last)["epoch"] == stop
    return last


# -- A. resume is exact with DataLoader workers and a pruning recipe --------------------------------
def test_resume_with_workers_and_recipe_is_bit_exact(shapes, tmp_path):
    common = _common(shapes, tmp_path, recipe=shapes["recipe"])
    ref = _load(train(name="ref", **common) / "weights/last.pt")
    # killed after epoch 1 (mid-pruning) and resumed with the same command; then, once more, after
    # epoch 2 (the first epoch of the cosine phase, masks final) and resumed with another worker count
    cut = _cut_run(common, "cut", 1)
    train(resume=str(cut), workers=2, device="cpu")
    cut2 = _cut_run(common, "cut2", 2)
    train(resume=str(cut2), workers=0, device="cpu")
    for got in (_load(cut), _load(cut2)):
        assert got["epoch"] == ref["epoch"] == 3
        for key in ("model", "ema"):
            assert got[key].keys() == ref[key].keys()
            for name, tensor in ref[key].items():
                assert torch.equal(tensor, got[key][name]), f"{key}.{name} differs after resume"
        assert got["ema_updates"] == ref["ema_updates"]
        assert _same(got["recipe_state"], ref["recipe_state"]), "recipe state (masks, schedules) differs"
    w = ref["model"]["model.2.conv.weight"]
    assert 0.75 < float((w == 0).float().mean()) < 0.85  # the recipe did prune


# -- B. resume with other settings is refused, naming the flag and both values -----------------------
@pytest.fixture(scope="module")
def cut_run(shapes, tmp_path_factory) -> Path:
    """A 2-epoch run (--img 64) interrupted after its first epoch."""
    project = tmp_path_factory.mktemp("runs")
    return _cut_run(_common(shapes, project, epochs=2, workers=0), "cut", 0)


def test_resume_refuses_changed_data_or_img(shapes, cut_run, tmp_path, capsys, monkeypatch):
    from sparseyolo.cli.main import main
    from sparseyolo.utils.errors import ConfigError

    other = tmp_path / "other.yaml"
    other.write_text(Path(shapes["data"]).read_text())
    before = cut_run.read_bytes()
    hw = ["--workers", "0", "--device", "cpu"]
    for flags, saved, new in (
        (["--img", "128"], "--img 64", "--img 128"),
        (["--img", "640"], "--img 64", "--img 640"),  # given, though it is the default
        (["--data", str(other)], f"--data {shapes['data']}", f"--data {other}"),
    ):
        assert main(["train", "--resume", str(cut_run), *flags, *hw]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("sparseyolo train: error: --resume "), err
        assert f"started with {saved}, this command gives {new}; a resumed run keeps its settings" in err[0]
        assert "Traceback" not in err[0]
    with pytest.raises(
        ConfigError,
        match=r"started with --epochs 2 and --img 64, this command gives --epochs 5 "
        r"and --img 96; .* Resume without --epochs and --img, or",
    ):
        train(resume=str(cut_run), img_size=96, epochs=5, workers=0, device="cpu")
    assert cut_run.read_bytes() == before  # nothing ran
    # the same settings, given again (the data YAML by another path, --img before rounding), and
    # hardware / output flags: accepted, and the run finishes with its own settings
    rel = Path(shapes["data"]).relative_to(shapes["root"])
    monkeypatch.chdir(shapes["root"])
    assert (
        main(
            [
                "train",
                "--resume",
                str(cut_run),
                "--data",
                str(rel),
                "--img",
                "60",
                "--batch-size",
                "2",
                "--noplots",
                *hw,
            ]
        )
        == 0
    )
    done = _load(cut_run)
    assert done["epoch"] == 1 and done["train_args"]["img_size"] == 64 and done["train_args"]["workers"] == 0


# -- C. an image that becomes unreadable mid-run is skipped, named, and training goes on -------------
class _BreakAfter(HookBase):
    """After epoch ``n``: cut ``half`` to half its size (OpenCV would decode the rest as grey) and
    ``empty`` to nothing, as a failing disk or a half-finished copy would."""

    def __init__(self, n: int, half: Path, empty: Path):
        self.n, self.half, self.empty = n, half, empty

    def after_epoch(self) -> None:
        if self.trainer.epoch == self.n:
            data = self.half.read_bytes()
            self.half.write_bytes(data[: len(data) // 2])
            self.empty.write_bytes(b"")


def test_image_truncated_mid_run_is_skipped_and_named(shapes, tmp_path, caplog):
    from sparseyolo.data.synthetic import make_shapes_dataset

    data = make_shapes_dataset(tmp_path / "data", n_train=8, n_val=2, img_size=64)  # our own copy to break
    images = sorted((tmp_path / "data/images/train").glob("*.jpg"))
    caplog.set_level(logging.INFO, logger="sparseyolo")
    common = _common(shapes, tmp_path, epochs=3)  # workers=2: the record crosses from the worker processes
    common["data"] = str(data)
    t = Trainer(TrainConfig(name="run", **common))
    assert t.train_loader.num_workers == 2 and t.train_loader.persistent_workers
    t.register_hooks([_BreakAfter(0, images[3], images[5])])
    save_dir = t.train()
    logged = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(logged) == 2, logged  # epochs 2 and 3, not epoch 1
    for epoch, line in zip((2, 3), logged, strict=False):
        names = line.split(": ", 2)[2]
        assert line.startswith(f"epoch {epoch}: skipped 2 unreadable images: ")
        assert sorted(names.split(", ")) == [str(images[3]), str(images[5])]
    assert _load(save_dir / "weights/last.pt")["epoch"] == 2
    rows = (save_dir / "results.csv").read_text().splitlines()
    assert len(rows) == 4 and "nan" not in rows[-1].split(",")[1]  # every epoch trained, finite losses


def test_resume_with_a_mismatched_ema_or_optimizer_is_one_line(shapes, tmp_path):
    """A resume checkpoint whose EMA or optimizer state does not fit the model: one clear line."""
    from sparseyolo.engine.trainer import train
    from sparseyolo.models.checkpoint import load_checkpoint
    from sparseyolo.utils.errors import WeightsError
    from sparseyolo.utils.io import atomic_torch_save

    run = train(
        cfg=shapes["cfg"],
        data=shapes["data"],
        epochs=2,
        project=str(tmp_path),
        img_size=64,
        batch_size=4,
        workers=0,
        device="cpu",
        noval=True,
        noplots=True,
        tensorboard=False,
        name="a",
        save_period=1,
    )
    ckpt = load_checkpoint(run / "weights/epoch1.pt")  # after the first epoch: resumable
    bad = dict(ckpt, ema={**ckpt["ema"], "model.0.conv.weight": torch.zeros(3, 3, 3, 3)})
    atomic_torch_save(bad, run / "weights/bad_ema.pt")
    with pytest.raises(
        WeightsError,
        match=r"bad_ema.pt \(ema\): model.0.conv.weight has shape \[3, 3, 3, 3\] in the "
        r"file, \[8, 3, 3, 3\] in the model",
    ):
        train(resume=str(run / "weights/bad_ema.pt"), device="cpu")
    state = ckpt["optimizer"]
    first = next(iter(state["state"]))
    state["state"][first] = {
        k: (torch.zeros(2) if torch.is_tensor(v) and v.dim() else v) for k, v in state["state"][first].items()
    }
    atomic_torch_save(dict(ckpt, optimizer=state), run / "weights/bad_opt.pt")
    with pytest.raises(
        WeightsError, match=r"bad_opt.pt \(optimizer\): momentum_buffer of .* has shape \[2\] in the file"
    ):
        train(resume=str(run / "weights/bad_opt.pt"), device="cpu")

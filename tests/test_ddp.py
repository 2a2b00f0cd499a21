"""Two-process DDP training on CPU (gloo): both ranks must end with identical weights."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, cfg: dict, out: str) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    from sparseyolo.engine.ema import de_parallel
    from sparseyolo.engine.setup import TrainConfig
    from sparseyolo.engine.trainer import Trainer

    t = Trainer(TrainConfig(**cfg))
    assert t.dist.world_size == world and len(t.train_dataset) == 8
    assert t.batches_per_epoch == 2  # 8 images / 2 ranks / 2 per rank
    torch.save({k: v.clone() for k, v in de_parallel(t.model).state_dict().items()}, f"{out}/init{rank}.pt")
    t.train()
    torch.save({k: v.clone() for k, v in de_parallel(t.model).state_dict().items()}, f"{out}/rank{rank}.pt")


def test_two_ranks_gloo_identical_weights(tmp_path):
    from sparseyolo.data.synthetic import make_shapes_dataset

    data = make_shapes_dataset(tmp_path / "shapes", n_train=8, n_val=2, img_size=64)
    model = yaml.safe_load((REPO / "src/sparseyolo/configs/models/yolov3-tiny.yaml").read_text())
    model["width_multiple"] = 0.25
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(model, sort_keys=False))
    cfg = dict(
        cfg=str(tmp_path / "tiny.yaml"),
        data=str(data),
        img_size=64,
        batch_size=4,
        epochs=2,
        workers=0,
        device="cpu",
        project=str(tmp_path / "runs"),
        noval=True,
        noplots=True,
        tensorboard=False,
        hyp="finetune",
    )
    mp.spawn(_worker, args=(2, _free_port(), cfg, str(tmp_path)), nprocs=2, join=True)
    load = lambda name: torch.load(tmp_path / f"{name}.pt", weights_only=True)  # noqa: E731
    a, b = load("rank0"), load("rank1")
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs between ranks"
    # both ranks started from rank 0's weights, and training moved them
    init0, init1 = load("init0"), load("init1")
    assert all(torch.equal(init0[k], init1[k]) for k in init0)
    assert not torch.equal(init0["model.0.conv.weight"], a["model.0.conv.weight"])
    # only rank 0 wrote the run folder
    runs = list((tmp_path / "runs").iterdir())
    assert [p.name for p in runs] == ["exp"] and (runs[0] / "weights/last.pt").is_file()


def test_device_selection_and_env(monkeypatch):
    from sparseyolo.engine.ddp import DistInfo, dist_info, select_device
    from sparseyolo.utils.errors import SparseYoloError

    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    info = dist_info()
    assert not info.distributed and info.main and info.world_size == 1
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert dist_info() == DistInfo(1, 1, 2) and not dist_info().main
    assert select_device("cpu", DistInfo()).type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(SparseYoloError, match="CUDA is not available"):
            select_device("0", DistInfo())


def test_img_size_rounding_and_resume_lookup(tmp_path, caplog):
    from sparseyolo.engine.checkpointing import find_last_checkpoint
    from sparseyolo.engine.setup import check_img_size
    from sparseyolo.utils.errors import WeightsError

    assert check_img_size(416, 32) == 416 and check_img_size(500, 32) == 512 and check_img_size(10, 32) == 32
    assert "not a multiple" in caplog.text
    with pytest.raises(WeightsError, match="no weights/last.pt found"):
        find_last_checkpoint(tmp_path)
    for name in ("exp", "exp2"):
        (tmp_path / name / "weights").mkdir(parents=True)
        (tmp_path / name / "weights/last.pt").write_bytes(b"x")
    os.utime(tmp_path / "exp/weights/last.pt", (2e9, 2e9))  # the newer one wins, not the higher name
    assert find_last_checkpoint(tmp_path) == tmp_path / "exp/weights/last.pt"


@pytest.mark.parametrize("mask_type", ["unstructured", "filter"])
def test_two_ranks_prune_and_thin_identically(tmp_path, mask_type):
    """A pruning recipe under DDP from scratch (each rank initialises differently): the ranks must
    compute the same masks from rank 0's weights, thin the same channels and end identical."""
    from sparseyolo.data.synthetic import make_shapes_dataset

    data = make_shapes_dataset(tmp_path / "shapes", n_train=8, n_val=2, img_size=64)
    model = yaml.safe_load((REPO / "src/sparseyolo/configs/models/yolov3-tiny.yaml").read_text())
    model["width_multiple"] = 0.25
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(model, sort_keys=False))
    (tmp_path / "recipe.yaml").write_text(
        "modifiers:\n  - !EpochRangeModifier {start_epoch: 0, end_epoch: 2}\n"
        "  - !GMPruningModifier {params: __ALL_PRUNABLE__, init_sparsity: 0.25, final_sparsity: 0.5, "
        f"mask_type: {mask_type}, start_epoch: 0, end_epoch: 1, update_frequency: 0.5}}\n"
    )
    cfg = dict(
        cfg=str(tmp_path / "tiny.yaml"),
        data=str(data),
        img_size=64,
        batch_size=4,
        workers=0,
        device="cpu",
        project=str(tmp_path / "runs"),
        noval=True,
        noplots=True,
        tensorboard=False,
        recipe=str(tmp_path / "recipe.yaml"),
    )
    mp.spawn(_worker, args=(2, _free_port(), cfg, str(tmp_path)), nprocs=2, join=True)
    a, b = torch.load(tmp_path / "rank0.pt", weights_only=True), torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert a["model.0.conv.weight"].shape[0] == (4 if mask_type == "filter" else 8)  # filters: half cut out
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs between ranks"

"""``--wandb``: what a training run logs to Weights & Biases, read back from wandb's offline run files.

wandb is the optional extra ``sparseyolo[wandb]`` (also in ``[test]``); without it these tests skip.
Offline mode: nothing leaves the machine, the run is a ``run-<id>.wandb`` file of protobuf records.
"""

from __future__ import annotations

import csv
import json
import math
import struct
import zlib
from pathlib import Path

import pytest
from conftest import stop_after_epoch
from helpers import FAST, LOGGED_COLUMNS

wandb = pytest.importorskip("wandb", reason="wandb is not installed (pip install 'sparseyolo[wandb]')")

from wandb.proto import wandb_internal_pb2  # noqa: E402

from sparseyolo.engine.setup import TrainConfig  # noqa: E402
from sparseyolo.engine.trainer import Trainer, train  # noqa: E402

LOGGED = (*LOGGED_COLUMNS, "epoch")  # every epoch: losses, validation metrics, learning rates


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch) -> Path:
    """Offline W&B with every folder it writes under tmp_path; returns WANDB_DIR."""
    wandb_dir = tmp_path / "wandb_dir"
    env = {
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(wandb_dir),
        "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config"),
        "WANDB_CACHE_DIR": str(tmp_path / "wandb_cache"),
        "WANDB_DATA_DIR": str(tmp_path / "wandb_data"),
        "WANDB_SILENT": "true",
        "WANDB_CONSOLE": "off",
        "WANDB_DISABLE_GIT": "true",
        "WANDB_DISABLE_CODE": "true",
        "WANDB_X_DISABLE_STATS": "true",  # no system-metrics sampler on a 2-core test machine
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for k in ("WANDB_API_KEY", "WANDB_RUN_ID", "WANDB_RESUME", "WANDB_PROJECT", "WANDB_ENTITY"):
        monkeypatch.delenv(k, raising=False)
    return wandb_dir


def read_wandb_file(path: Path) -> list:
    """The records of a ``.wandb`` run file: wandb's LevelDB-style log (a 7-byte ``:W&B`` header, then
    32 KiB blocks of chunks ``crc32 | length | type | data``; FULL=1, FIRST=2, MIDDLE=3, LAST=4), each
    record a ``wandb_internal_pb2.Record``. (wandb 0.31 no longer ships a Python reader for it.)"""
    buf = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", buf[:7])
    assert (ident, magic) == (b":W&B", 0xBEE1), f"{path}: not a wandb run file"
    block, pos, records, pending = 32768, 7, [], b""
    while pos + 7 <= len(buf):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        crc, n, kind = struct.unpack("<IHB", buf[pos : pos + 7])
        if kind == 0 and n == 0:  # zero padding at the end
            break
        data = buf[pos + 7 : pos + 7 + n]
        assert zlib.crc32(bytes([kind]) + data) == crc, f"{path}: bad checksum at byte {pos}"
        pos += 7 + n
        pending = data if kind in (1, 2) else pending + data
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(pending)
            records.append(rec)
    return records


def _items(items) -> dict:
    return {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in items}


def read_run(path: Path) -> dict:
    """{"id", "project", "name", "config", "history": [one dict per wandb.log], "exit_code"}."""
    out = {"history": [], "exit_code": None}
    for rec in read_wandb_file(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            config = {
                k: v.get("value", v) if isinstance(v, dict) else v for k, v in _items(rec.run.config.update).items()
            }
            out |= {"id": rec.run.run_id, "project": rec.run.project, "name": rec.run.display_name, "config": config}
        elif kind == "history":
            out["history"].append(_items(rec.history.item))
        elif kind == "exit":
            out["exit_code"] = rec.exit.exit_code
    return out


def _run_files(wandb_dir: Path) -> list[Path]:
    return sorted(wandb_dir.glob("wandb/offline-run-*/run-*.wandb"))


def _csv_rows(save_dir: Path) -> list[dict]:
    with open(save_dir / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def _check_epoch(logged: dict, row: dict) -> None:
    missing = [k for k in LOGGED if k not in logged]
    assert not missing, f"not logged: {missing}"
    assert logged["epoch"] == int(row["epoch"])
    for k in LOGGED[:-1]:  # the same numbers as results.csv (which keeps 5 significant digits)
        v = float(row[k])
        assert math.isfinite(logged[k]) and logged[k] == pytest.approx(v, rel=1e-4, abs=1e-9), k
    assert logged["x/lr0"] > 0 and logged["metrics/mAP_0.5"] >= logged["metrics/mAP_0.5:0.95"] >= 0


def test_wandb_logs_every_epoch(shapes_data, tmp_path, offline_wandb):
    save_dir = train(
        cfg=shapes_data["cfg"], data=shapes_data["data"], epochs=1, project=str(tmp_path / "runs"), wandb=True, **FAST
    )
    (run_file,) = _run_files(offline_wandb)  # WANDB_DIR is honoured: the run is there, not in save_dir
    run = read_run(run_file)
    assert run["id"] == (save_dir / "wandb_id.txt").read_text().strip()
    assert run["project"] == "runs" and run["name"] == save_dir.name == "exp"
    assert run["config"]["epochs"] == 1 and run["config"]["img_size"] == FAST["img_size"]
    rows = _csv_rows(save_dir)
    assert len(run["history"]) == len(rows) == 1  # one wandb.log per epoch
    _check_epoch(run["history"][0], rows[0])
    assert run["exit_code"] == 0


def test_wandb_resume_continues_the_run(shapes_data, tmp_path, offline_wandb):
    common = dict(cfg=shapes_data["cfg"], data=shapes_data["data"], epochs=2, project=str(tmp_path / "runs"))
    t = Trainer(TrainConfig(name="cut", wandb=True, **common, **FAST))
    t.register_hooks([stop_after_epoch(0)])
    with pytest.raises(KeyboardInterrupt):
        t.train()
    save_dir = train(resume=str(tmp_path / "runs/cut/weights/last.pt"), workers=0, device="cpu")
    first, second = (read_run(p) for p in _run_files(offline_wandb))
    assert first["id"] == second["id"]  # one W&B run, in two offline pieces (wandb sync joins them)
    assert first["exit_code"] != 0 and second["exit_code"] == 0  # the interrupted piece shows as failed
    rows = _csv_rows(save_dir)
    assert [h["epoch"] for h in first["history"] + second["history"]] == [0, 1] and len(rows) == 2
    _check_epoch(second["history"][0], rows[1])


def test_wandb_init_failure_does_not_stop_training(tmp_path, offline_wandb, monkeypatch, caplog):
    """Online mode without an API key (or any other wandb.init error): a warning, then training goes on."""
    from types import SimpleNamespace

    from sparseyolo.engine.logger import LoggerHook

    def fail(**kwargs):
        raise wandb.errors.UsageError("api_key not configured (no-tty)")

    monkeypatch.setattr(wandb, "init", fail)
    hook = LoggerHook(tmp_path / "exp", ["a"], tensorboard=False, wandb=True, plots=False)
    hook.trainer = SimpleNamespace(dist=SimpleNamespace(main=True), start_epoch=0, config_dict=dict, failed=False)
    with caplog.at_level("WARNING"):
        hook.before_train()
    assert hook.wandb is None and "wandb.init failed" in caplog.text and "api_key" in caplog.text

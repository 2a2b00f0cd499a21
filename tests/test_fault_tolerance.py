"""Faults that lose nothing: a full disk during training, an export killed mid-write, two runs
started at once under the same ``--project/--name``."""

from __future__ import annotations

import copy
import errno
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from conftest import qat_checkpoint

from sparseyolo.cli.main import main
from sparseyolo.utils.io import (
    DiskFullError,
    atomic_torch_save,
    atomic_write_bytes,
    increment_path,
)

linux_only = pytest.mark.skipif(
    not (os.path.exists("/dev/full") and os.path.isdir("/proc/self/fd")),
    reason="needs /dev/full and /proc/self/fd (Linux)",
)


def _fd_path(f) -> str:
    return os.path.realpath(os.readlink(f"/proc/self/fd/{f.fileno()}"))


# -- 1. disk full while a checkpoint is written ---------------------------------------------------
@pytest.fixture(scope="module")
def shapes(shapes_data) -> dict:
    return shapes_data


def _fill_disk_at(monkeypatch, name: str, nth: int) -> list[str]:
    """From the ``nth`` write of a checkpoint called ``name`` on, ``torch.save`` writes into
    /dev/full: the kernel's real ENOSPC, surfacing the way torch reports it."""
    real_save, seen = torch.save, []

    def save(obj, f, *args, **kwargs):
        if hasattr(f, "fileno"):
            target = os.path.basename(_fd_path(f))
            if target.startswith(f".{name}."):
                seen.append(target)
                if len(seen) >= nth:
                    full = os.open("/dev/full", os.O_WRONLY)
                    os.dup2(full, f.fileno())
                    os.close(full)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    return seen


@linux_only
def test_disk_full_mid_training_keeps_last_checkpoint_and_resumes(shapes, tmp_path, monkeypatch, capsys):
    from sparseyolo.models.checkpoint import load_checkpoint

    args = [
        "train",
        "--cfg",
        shapes["cfg"],
        "--data",
        shapes["data"],
        "--epochs",
        "3",
        "--img",
        "64",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--project",
        str(tmp_path),
        "--noplots",
        "--no-tensorboard",
    ]
    seen = _fill_disk_at(monkeypatch, "last.pt", nth=2)  # the second epoch's last.pt
    assert main(args) == 2
    assert len(seen) == 2
    weights = tmp_path / "exp/weights"
    last = weights / "last.pt"
    err = capsys.readouterr().err  # progress bars, then the one error line
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"sparseyolo train: error: no space left on device while writing {last}; the previous "
        f"checkpoint is intact: free some space and resume with --resume {last}"
    )
    ckpt = load_checkpoint(last)
    assert ckpt["epoch"] == 0 and ckpt["optimizer"] is not None  # epoch 1's, still resumable
    assert sorted(p.name for p in weights.iterdir()) == ["best.pt", "last.pt"]  # no .tmp left behind

    monkeypatch.undo()  # space freed
    assert main(["train", "--resume", str(last), "--workers", "0", "--device", "cpu"]) == 0
    ckpt = load_checkpoint(last)
    assert ckpt["epoch"] == 2 and ckpt["optimizer"] is None
    assert sorted(p.name for p in weights.iterdir()) == ["best.pt", "last.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]  # resumed in place


@linux_only
def test_disk_full_before_any_checkpoint_says_so(shapes, tmp_path, monkeypatch, capsys):
    args = [
        "train",
        "--cfg",
        shapes["cfg"],
        "--data",
        shapes["data"],
        "--epochs",
        "1",
        "--img",
        "64",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--project",
        str(tmp_path),
        "--noplots",
        "--no-tensorboard",
        "--noval",
    ]
    _fill_disk_at(monkeypatch, "last.pt", nth=1)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"sparseyolo train: error: no space left on device while writing {tmp_path}/exp/weights/last.pt; "
        f"no last.pt had been saved yet: free some space and start the run again"
    )
    assert not [p for p in (tmp_path / "exp/weights").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("where, code", [("fsync", errno.ENOSPC), ("write", errno.EDQUOT)])
def test_atomic_write_turns_a_full_disk_into_one_error(tmp_path, monkeypatch, where, code):
    """A full disk can surface at write() or only at fsync() (delayed allocation, NFS); either way
    the caller gets a DiskFullError (an OSError too), the old file stays and no temporary file does."""
    target = tmp_path / "c.pt"
    atomic_torch_save({"v": 1}, target)
    import sparseyolo.utils.io as io_mod

    if where == "fsync":

        def fsync(fd):
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(io_mod.os, "fsync", fsync)
    else:

        def save(obj, f):
            f.write(b"PK\x03\x04 half")
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos") from OSError(code, "full")

        monkeypatch.setattr(torch, "save", save)
    with pytest.raises(OSError) as info:
        atomic_torch_save({"v": 2}, target)
    monkeypatch.undo()
    assert isinstance(info.value, DiskFullError) and info.value.errno == code
    reason = "no space left on device" if code == errno.ENOSPC else "disk quota exceeded"
    assert str(info.value) == f"{reason} while writing {target}; the previous c.pt is intact"
    assert torch.load(target, weights_only=True) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
    with pytest.raises(TypeError):  # other errors pass through unchanged
        atomic_write_bytes(tmp_path / "d.bin", None)  # type: ignore[arg-type]
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


# -- 2. export killed mid-write -------------------------------------------------------------------
# The child patches every way Python opens a file for writing; the Nth file opened for writing in
# the export folder gets half its first write, flushed and fsynced, then the process SIGKILLs itself.
KILLER = r"""
import builtins, io, os, signal, sys
folder, kill_at, argv = os.path.realpath(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
import onnx, torch
from sparseyolo.cli.main import main
opened = []

class Dying:
    def __init__(self, f):
        self._f = f
    def write(self, data):
        self._f.write(data[: max(1, len(data) // 2)])
        self._f.flush()
        os.fsync(self._f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return self._f.__exit__(*exc)
    def __getattr__(self, name):
        return getattr(self._f, name)

def watch(f):
    if not f.writable():
        return f
    path = os.path.realpath(os.readlink(f"/proc/self/fd/{f.fileno()}"))
    if os.path.dirname(path) != folder:
        return f
    opened.append(path)
    return Dying(f) if len(opened) == kill_at else f

real_open, real_fdopen = builtins.open, os.fdopen
builtins.open = io.open = lambda *a, **k: watch(real_open(*a, **k))
os.fdopen = lambda *a, **k: watch(real_fdopen(*a, **k))
sys.exit(main(argv))
"""


def _export_killed(weights: Path, kill_at: int, *extra: str) -> None:
    args = ["export", "--weights", str(weights), "--img-size", "64", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-c", KILLER, str(weights.parent), str(kill_at), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert out.returncode == -9, f"the export was not killed while writing (rc {out.returncode}):\n{out.stderr[-3000:]}"


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if not p.name.startswith(".")}


@pytest.fixture(scope="module")
def tiny_model():
    from sparseyolo.models import build_model

    torch.manual_seed(0)
    return build_model("yolov3-tiny", nc=2, width_multiple=0.25, names=["a", "b"]).eval()


@linux_only
def test_export_killed_writing_the_onnx_file_leaves_no_partial_file(tiny_model, tmp_path):
    from sparseyolo.models.checkpoint import save_checkpoint

    weights = save_checkpoint(tmp_path / "best.pt", model=tiny_model)
    _export_killed(weights, 1)
    assert _snapshot(tmp_path).keys() == {"best.pt"}  # nothing under best.onnx
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert all(n.startswith(".best.onnx.") and n.endswith(".tmp") for n in leftovers), leftovers


@linux_only
def test_export_killed_writing_the_packed_file_keeps_the_old_one(tiny_model, tmp_path):
    import onnx

    from sparseyolo.models.checkpoint import save_checkpoint

    sparse = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for m in sparse.modules():
            if isinstance(m, torch.nn.Conv2d) and m.weight.numel() >= 1024:
                w = m.weight
                w[w.abs() < w.abs().flatten().kthvalue(int(0.7 * w.numel())).values] = 0
    weights = save_checkpoint(tmp_path / "best.pt", model=sparse)
    assert main(["export", "--weights", str(weights), "--img-size", "64", "--pack-sparse"]) == 0
    before = _snapshot(tmp_path)
    assert before.keys() == {"best.pt", "best.onnx", "best.packed.onnx"}
    _export_killed(weights, 2, "--pack-sparse")  # killed while writing best.packed.onnx
    after = _snapshot(tmp_path)
    assert after.keys() == before.keys()
    assert after["best.packed.onnx"] == before["best.packed.onnx"]
    onnx.checker.check_model(onnx.load(tmp_path / "best.onnx"))  # rewritten whole before the kill


@linux_only
def test_export_killed_writing_the_qlinear_file_keeps_the_old_one(tiny_model, tmp_path):
    weights = qat_checkpoint(tiny_model, tmp_path / "q.pt")
    assert main(["export", "--weights", str(weights), "--img-size", "64"]) == 0
    before = _snapshot(tmp_path)
    assert before.keys() == {"q.pt", "q.onnx", "q.qlinear.onnx"}
    _export_killed(weights, 2)  # killed while writing q.qlinear.onnx
    after = _snapshot(tmp_path)
    assert after.keys() == before.keys() and after["q.qlinear.onnx"] == before["q.qlinear.onnx"]


# -- 3. two runs, one --project/--name --------------------------------------------------------------
def test_runs_started_at_once_claim_different_folders(tmp_path):
    """Threads released together by a barrier all ask for runs/exp: each must get its own folder."""
    n_threads, rounds = 6, 40
    for r in range(rounds):
        base = tmp_path / f"r{r}" / "exp"
        barrier = threading.Barrier(n_threads)
        got: list[Path] = []

        def claim(barrier=barrier, got=got, base=base):
            barrier.wait()
            got.append(increment_path(base))

        threads = [threading.Thread(target=claim) for _ in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        names = sorted(p.name for p in got)
        assert len(set(names)) == n_threads, f"round {r}: two runs share a folder: {names}"
        assert set(names) == {"exp"} | {f"exp{i}" for i in range(2, n_threads + 1)}
        assert all(p.is_dir() for p in got)


def test_claim_does_not_trust_an_earlier_existence_check(tmp_path, monkeypatch):
    """Another run creates exp between our look and our mkdir: we must not share it."""
    (tmp_path / "exp").mkdir()
    monkeypatch.setattr(Path, "exists", lambda self: False)  # the look said "free"
    got = increment_path(tmp_path / "exp")
    monkeypatch.undo()
    assert got.name == "exp2" and got.is_dir()
    assert increment_path(tmp_path / "exp", exist_ok=True).name == "exp"  # --exist-ok shares on purpose
    assert increment_path(tmp_path / "exp", mkdir=False).name == "exp3"  # a guess only, not created
    assert not (tmp_path / "exp3").exists()

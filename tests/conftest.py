import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")
# hypothesis keeps a cache folder; keep it out of the repository
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "sparseyolo-hypothesis"))

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SPARSEYOLO_SHARED", REPO.parent / "shared"))


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


# ONNX Runtime's x86 int8 convolution without VNNI (AVX2 / plain AVX-512) multiplies u8 x s8 pairs with
# vpmaddubsw, whose int16 pair sums saturate: its outputs then differ from exact int8 arithmetic by a
# few quantization steps, whatever the exporter does. Exact-parity tests can only hold with VNNI or AMX.
INT8_EXACT_ON_ORT = bool(_cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"}) or not _cpu_flags()


# CI (.ci/run) sets this: there a missing ../shared is a failure, not a reason to skip
REQUIRE_SHARED = os.environ.get("SPARSEYOLO_REQUIRE_SHARED", "") not in ("", "0")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only reference data beside the repo (``real_data`` tests only). Absent: the test is
    skipped, or fails under ``SPARSEYOLO_REQUIRE_SHARED=1`` (CI)."""
    if not SHARED.is_dir():
        if REQUIRE_SHARED:
            pytest.fail(f"shared data not found at {SHARED} (SPARSEYOLO_REQUIRE_SHARED is set)")
        pytest.skip(f"shared data not found at {SHARED}")
    return SHARED


def pytest_collection_modifyitems(config, items):
    """A test that reads ../shared must say so: ``shared_dir`` is only for ``real_data`` tests."""
    unmarked = [
        i.nodeid
        for i in items
        if "shared_dir" in getattr(i, "fixturenames", ()) and not i.get_closest_marker("real_data")
    ]
    if unmarked:
        raise pytest.UsageError("tests use shared_dir without @pytest.mark.real_data: " + ", ".join(unmarked[:10]))


def _shared_snapshot() -> set[str]:
    return {str(f) for f in SHARED.rglob("*")} if SHARED.is_dir() else set()


@pytest.fixture(autouse=True, scope="session")
def _shared_stays_untouched():
    """Tests must never write into ../shared (label caches included): the session fails if a file appeared."""
    before = _shared_snapshot()
    yield
    new = sorted(_shared_snapshot() - before)
    assert not new, f"the test session wrote into {SHARED}: {', '.join(new[:5])}"


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    import torch

    torch.set_num_threads(2)


@pytest.fixture
def http_dir(tmp_path):
    """A loopback HTTP server over a fresh folder: ``(folder, "http://127.0.0.1:PORT/")``. Tests of
    download code use it; nothing in the suite reaches the network."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    served = tmp_path / "served"
    served.mkdir()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(served)))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def _quarter_tiny_yaml(path: Path) -> Path:
    """Write the shipped YOLOv3-tiny YAML at a quarter of its width (nc 80) to ``path``."""
    import yaml

    from sparseyolo.models.parse import CONFIG_DIR

    model = yaml.safe_load((CONFIG_DIR / "yolov3-tiny.yaml").read_text())
    model["width_multiple"] = 0.25
    path.write_text(yaml.safe_dump(model, sort_keys=False))
    return path


# 80 class names, as many as COCO has: class ids of the shapes labels (0-2) are valid, 95 is not
NAMES80 = [f"class{i}" for i in range(80)]


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory) -> dict:
    """The built-in shapes dataset (8 train, 4 val images at 64 px) and a quarter-width YOLOv3-tiny
    YAML, made once per test module (a module may damage its copy): ``{"data", "cfg", "root"}``."""
    from sparseyolo.data.synthetic import make_shapes_dataset

    root = tmp_path_factory.mktemp("shapes")
    data = make_shapes_dataset(root / "data", n_train=8, n_val=4, img_size=64)
    return {"data": str(data), "cfg": str(_quarter_tiny_yaml(root / "tiny.yaml")), "root": root}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> dict:
    """An 80-class dataset YAML whose splits are image lists (``train.txt``: 8, ``val.txt``: 4 generated
    shapes images at 64 px) and a quarter-width YOLOv3-tiny YAML, once per module: ``{"data", "cfg",
    "root"}`` (``data`` and ``cfg`` as str)."""
    import yaml

    from sparseyolo.data.synthetic import make_shapes_dataset

    root = tmp_path_factory.mktemp("tiny")
    make_shapes_dataset(root / "shapes", n_train=8, n_val=4, img_size=64)
    for split in ("train", "val"):
        images = sorted((root / "shapes/images" / split).glob("*.jpg"))
        (root / f"{split}.txt").write_text("\n".join(str(p) for p in images) + "\n")
    data = root / "data.yaml"
    data.write_text(yaml.safe_dump({"train": str(root / "train.txt"), "val": str(root / "val.txt"), "names": NAMES80}))
    cfg = _quarter_tiny_yaml(root / "tiny.yaml")
    return {"data": str(data), "cfg": str(cfg), "root": root}


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory) -> dict:
    """6 train / 6 val generated shapes JPEGs (64 px) plus every kind of broken sample, data YAMLs and a
    quarter-width YOLOv3-tiny YAML (80 classes), once per module. Paths are ``Path``; the ``*`` keys
    name the stems of the damaged samples.

    train: ``random.jpg`` (random bytes), labels that are not numbers (``text``), a class id >= nc
    (``cls95``) and a duplicate row (``dup``). val (listed in ``val.txt``): ``random.jpg``, a JPEG cut to a
    third (``trunc.jpg``), an empty label file (``empty_label``: no objects, not an error), a 4-column
    row (``four_cols``), a coordinate of 1.7 (``coord``) and a listed ``missing.jpg``."""
    import random
    import shutil

    import yaml

    from sparseyolo.data.synthetic import make_shapes_dataset

    root = tmp_path_factory.mktemp("bad")
    gen = root / "generated"
    make_shapes_dataset(gen, n_train=6, n_val=6, img_size=64)
    for split in ("train", "val"):
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
        for img in sorted((gen / "images" / split).glob("*.jpg")):
            shutil.copy(img, root / split / "images" / img.name)
            shutil.copy(gen / "labels" / split / f"{img.stem}.txt", root / split / "labels")
    shutil.rmtree(gen)
    train = sorted((root / "train/images").glob("*.jpg"))
    val = sorted((root / "val/images").glob("*.jpg"))
    rng = random.Random(0)
    # a corrupt JPEG (random bytes) and a truncated one, each with a valid label
    for d in ("train", "val"):
        (root / d / "images/random.jpg").write_bytes(bytes(rng.randrange(256) for _ in range(2000)))
        (root / d / "labels/random.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (root / "train/labels" / f"{train[0].stem}.txt").write_text("a b c d e\n")  # not numbers
    (root / "train/labels" / f"{train[1].stem}.txt").write_text("95 0.5 0.5 0.1 0.1\n")  # class id >= nc
    (root / "train/labels" / f"{train[2].stem}.txt").write_text("0 0.5 0.5 0.1 0.1\n" * 2)  # duplicate row
    (root / "val/images/trunc.jpg").write_bytes(val[0].read_bytes()[: val[0].stat().st_size // 3])
    (root / "val/labels/trunc.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (root / "val/labels" / f"{val[1].stem}.txt").write_text("")  # empty = no objects: fine, not an error
    (root / "val/labels" / f"{val[2].stem}.txt").write_text("0 0.5 0.5 0.1\n")  # 4 columns
    (root / "val/labels" / f"{val[3].stem}.txt").write_text("0 1.7 0.5 0.1 0.1\n")  # coordinate 1.7
    listed = [str(p) for p in sorted((root / "val/images").glob("*.jpg"))] + [str(root / "val/images/missing.jpg")]
    (root / "val.txt").write_text("\n".join(listed) + "\n")
    data = {"train": str(root / "train/images"), "val": str(root / "val.txt"), "names": NAMES80}
    (root / "data.yaml").write_text(yaml.safe_dump(data))
    (root / "nonames.yaml").write_text(yaml.safe_dump({k: v for k, v in data.items() if k != "names"}))
    (root / "empty/images").mkdir(parents=True)
    (root / "empty.yaml").write_text(yaml.safe_dump(dict(data, train=str(root / "empty/images"))))
    return {
        "root": root,
        "data": root / "data.yaml",
        "cfg": _quarter_tiny_yaml(root / "tiny.yaml"),
        "empty_label": val[1].stem,
        "four_cols": val[2].stem,
        "coord": val[3].stem,
        "text": train[0].stem,
        "cls95": train[1].stem,
        "dup": train[2].stem,
    }


@pytest.fixture(scope="session")
def tiny_darknet(tmp_path_factory) -> dict:
    """A Darknet pair written by ``save_darknet`` for a random-weight quarter-width YOLOv3-tiny (nc 80,
    BatchNorm statistics randomised), with the model YAML that builds it: ``{"weights", "darknet_cfg",
    "cfg", "root"}`` (``Path``s). The file name is no registry name, so loading it needs ``--cfg``.
    Read-only: copy it before damaging it."""
    import torch
    from helpers import randomize_bn

    from sparseyolo.models import DetectionModel
    from sparseyolo.models.darknet import save_darknet

    root = tmp_path_factory.mktemp("darknet")
    cfg = _quarter_tiny_yaml(root / "tiny.yaml")
    torch.manual_seed(0)
    model = DetectionModel(str(cfg), nc=80).eval()
    randomize_bn(model, seed=5)
    darknet_cfg, weights = save_darknet(model, root / "tiny-random.weights")
    return {"weights": weights, "darknet_cfg": darknet_cfg, "cfg": cfg, "root": root}


@pytest.fixture
def cli(capfd, caplog):
    """``cli(*args) -> (exit code, everything printed or logged)`` through ``sparseyolo.cli.main.main``
    in this process; an exception escaping ``main`` (a user's traceback) fails the test."""
    import logging
    import traceback

    from sparseyolo.cli.main import main

    caplog.set_level(logging.INFO)

    def call(*args) -> tuple[int, str]:
        capfd.readouterr()
        caplog.clear()
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:  # argparse usage errors
            rc = e.code
        except BaseException:  # what a user would see as a traceback
            pytest.fail(f"sparseyolo {' '.join(map(str, args))} raised:\n{traceback.format_exc()}")
        out, err = capfd.readouterr()
        return rc, out + err + caplog.text

    return call


def stop_after_epoch(n: int):
    """A training hook that raises KeyboardInterrupt right after epoch ``n`` was checkpointed: the
    crash of an interrupted run, for resume tests."""
    from sparseyolo.engine.base import HookBase

    class StopAfterEpoch(HookBase):
        def after_epoch(self) -> None:
            if self.trainer.epoch == n:
                raise KeyboardInterrupt

    return StopAfterEpoch()


def qat_checkpoint(model, path: Path, batches: int = 1, **config_overrides) -> Path:
    """``model`` (a DetectionModel) made quantization-aware (all but the Detect head), observers fed
    ``batches`` random batches, saved as a checkpoint whose recipe state records the QAT structure.
    ``config_overrides``: ``QATConfig`` keys, e.g. ``weight_bits=7``."""
    import copy

    import torch

    from sparseyolo.models.checkpoint import save_checkpoint
    from sparseyolo.quantization import QATConfig, freeze_bn_stats, prepare_qat

    model = copy.deepcopy(model)
    submodules = [f"model.{i}" for i in range(len(model.model) - 1)]
    config = {"weight_bits": 8, "activation_bits": 8, "fuse": "conv_bn_relus", **config_overrides}
    prepare_qat(model, submodules, QATConfig(**config))
    freeze_bn_stats(model)
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.rand(2, 3, 64, 64))
    return save_checkpoint(path, model=model, recipe_state={"qat": {"submodules": submodules, "config": config}})

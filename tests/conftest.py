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


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only reference data beside the repo; tests needing it skip when it is absent."""
    if not SHARED.is_dir():
        pytest.skip(f"shared data not found at {SHARED}")
    return SHARED


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


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory) -> dict:
    """The built-in shapes dataset (8 train, 4 val images at 64 px) and a quarter-width YOLOv3-tiny
    YAML, made once per test module (a module may damage its copy): ``{"data", "cfg", "root"}``."""
    import yaml

    from sparseyolo.data.synthetic import make_shapes_dataset
    from sparseyolo.models.parse import CONFIG_DIR

    root = tmp_path_factory.mktemp("shapes")
    data = make_shapes_dataset(root / "data", n_train=8, n_val=4, img_size=64)
    model = yaml.safe_load((CONFIG_DIR / "yolov3-tiny.yaml").read_text())
    model["width_multiple"] = 0.25
    (root / "tiny.yaml").write_text(yaml.safe_dump(model))
    return {"data": str(data), "cfg": str(root / "tiny.yaml"), "root": root}


def stop_after_epoch(n: int):
    """A training hook that raises KeyboardInterrupt right after epoch ``n`` was checkpointed: the
    crash of an interrupted run, for resume tests."""
    from sparseyolo.engine.base import HookBase

    class StopAfterEpoch(HookBase):
        def after_epoch(self) -> None:
            if self.trainer.epoch == n:
                raise KeyboardInterrupt

    return StopAfterEpoch()


def qat_checkpoint(model, path: Path, batches: int = 1) -> Path:
    """``model`` (a DetectionModel) made quantization-aware (all but the Detect head), observers fed
    ``batches`` random batches, saved as a checkpoint whose recipe state records the QAT structure."""
    import copy

    import torch

    from sparseyolo.models.checkpoint import save_checkpoint
    from sparseyolo.quantization import QATConfig, freeze_bn_stats, prepare_qat

    model = copy.deepcopy(model)
    submodules = [f"model.{i}" for i in range(len(model.model) - 1)]
    config = {"weight_bits": 8, "activation_bits": 8, "fuse": "conv_bn_relus"}
    prepare_qat(model, submodules, QATConfig(**config))
    freeze_bn_stats(model)
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.rand(2, 3, 64, 64))
    return save_checkpoint(path, model=model, recipe_state={"qat": {"submodules": submodules, "config": config}})

"""`val` / `detect` / `report` on the engine you deploy to (`--engine`), and each engine's int8 form.

One quarter-width YOLOv3-tiny is overfitted for a few steps on the shapes dataset's val images (so its
mAP is far from 0 and a disagreement between engines would show), then exported fp32 and QAT int8
(``int8.onnx`` QDQ + ``int8.qlinear.onnx``) at 64 px. Engines that are not installed are skipped with
the reason (DeepSparse needs ``.venv-deepsparse`` or ``SPARSEYOLO_DEEPSPARSE_PYTHON``).
"""

from __future__ import annotations

import logging
import shutil

import pytest
import torch
from conftest import qat_checkpoint

from sparseyolo.runtime.engines import get_engine

ENGINES = ("onnxruntime", "openvino", "deepsparse")
STEPS = 40  # Adam steps on the 4 val images: mAP@0.5 about 0.5


def _need(engine: str) -> None:
    ok, why = get_engine(engine).available()
    if not ok:
        pytest.skip(f"{engine} is not installed here: {why}")


@pytest.fixture
def openvino_prefers_qdq(monkeypatch):
    """The table's OpenVINO rule for this CPU replaced by "QDQ" (the measured rules differ by CPU: the
    tests of the picking mechanism must not)."""
    from sparseyolo.runtime import forms

    rule = forms.FormRule("qdq", "test rule")
    monkeypatch.setitem(forms.PREFERRED_INT8_FORM, ("openvino", forms.cpu_class()), rule)
    return rule


def _overfit(data: dict):
    """The quarter-width YOLOv3-tiny after ``STEPS`` steps on the val images (1 torch thread: much
    faster than 2 on a busy 2-core machine)."""
    import yaml

    from sparseyolo.data.config import load_data_config
    from sparseyolo.data.dataset import create_dataloader
    from sparseyolo.engine.hyp import resolve_hyp_path
    from sparseyolo.engine.loss import YoloLoss
    from sparseyolo.models import DetectionModel

    cfg = load_data_config(data["data"])
    torch.manual_seed(0)
    model = DetectionModel(data["cfg"], nc=len(cfg["names"]))
    model.names = list(cfg["names"])
    loss_fn = YoloLoss(model, yaml.safe_load(resolve_hyp_path("scratch").read_text()), img_size=64)
    loader, _ = create_dataloader(cfg["val"], 64, 4, 32, workers=0)
    imgs, targets = next(iter(loader))[:2]
    x = imgs.float() / 255
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model.train()
        for _ in range(STEPS):
            loss, _ = loss_fn(model(x), targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


@pytest.fixture(scope="module")
def exports(shapes_data, tmp_path_factory) -> dict:
    """``{"fp32", "qdq", "qlinear"}`` ONNX paths (static 1x3x64x64), the fp32 ``pt``, ``data``, the val
    ``images`` folder, ``root``."""
    from sparseyolo.cli.main import main
    from sparseyolo.models.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("engine_val")
    model = _overfit(shapes_data)
    save_checkpoint(root / "fp32.pt", model=model)
    qat_checkpoint(model, root / "int8.pt", batches=2)
    for pt in ("fp32.pt", "int8.pt"):
        assert main(["export", "--weights", str(root / pt), "--img-size", "64"]) == 0
    out = {
        "fp32": root / "fp32.onnx",
        "qdq": root / "int8.onnx",
        "qlinear": root / "int8.qlinear.onnx",
        "pt": root / "fp32.pt",
        "data": shapes_data["data"],
        "images": str(shapes_data["root"] / "data" / "images" / "val"),
        "root": root,
    }
    assert all(p.is_file() for p in (out["fp32"], out["qdq"], out["qlinear"]))
    return out


@pytest.fixture(scope="module")
def val_map(exports, tmp_path_factory):
    """``val_map(file key, engine, exact=True) -> (mAP@0.5, mAP@0.5:0.95)`` through ``runtime.val.run``
    (batch 4, square 64 px), cached per module."""
    from sparseyolo.runtime.val import run as val_run

    cache: dict = {}
    project = tmp_path_factory.mktemp("val_runs")

    def get(key: str, engine: str, exact: bool = True) -> tuple[float, float]:
        if (key, engine, exact) not in cache:
            metrics, _, _ = val_run(
                exports[key],
                exports["data"],
                img_size=64,
                batch_size=4,
                workers=0,
                plots=False,
                project=project,
                name=f"{key}-{engine}",
                engine=engine,
                exact_file=exact,
            )
            cache[key, engine, exact] = (metrics["mAP50"], metrics["mAP50-95"])
            print(f"{key} on {engine}: mAP@0.5 {metrics['mAP50']:.4f}, mAP@0.5:0.95 {metrics['mAP50-95']:.4f}")
        return cache[key, engine, exact]

    return get


# ------------------------------------------------------------------------------------- mAP per engine
@pytest.mark.parametrize("engine", ["openvino", "deepsparse"])
@pytest.mark.parametrize("form", ["qdq", "qlinear"])
def test_int8_map_agrees_with_onnxruntime(val_map, form, engine):
    """Each int8 file, run as named, scores within 0.01 mAP@0.5 of ONNX Runtime."""
    _need(engine)
    ref50, _ = val_map(form, "onnxruntime")
    got50, _ = val_map(form, engine)
    assert ref50 > 0.2, f"the test model should detect something (mAP@0.5 {ref50:.3f})"
    assert abs(got50 - ref50) <= 0.01, f"{form} on {engine}: mAP@0.5 {got50:.4f} vs onnxruntime {ref50:.4f}"


@pytest.mark.parametrize("engine", ["openvino", "deepsparse"])
def test_fp32_map_and_boxes_agree_with_onnxruntime(exports, val_map, engine):
    from sparseyolo.data.config import load_data_config
    from sparseyolo.data.dataset import create_dataloader
    from sparseyolo.runtime.backends import load_backend

    _need(engine)
    ref = val_map("fp32", "onnxruntime")
    got = val_map("fp32", engine)
    assert ref[0] > 0.2
    assert got == pytest.approx(ref, abs=2e-3), f"fp32 on {engine}: {got} vs onnxruntime {ref}"
    loader, _ = create_dataloader(load_data_config(exports["data"])["val"], 64, 4, 32, workers=0)
    imgs = next(iter(loader))[0]
    ort, other = load_backend(exports["fp32"]), load_backend(exports["fp32"], engine=engine)
    try:
        assert other.engine == engine and ort.engine == "onnxruntime"
        torch.testing.assert_close(other(imgs), ort(imgs), rtol=1e-3, atol=2e-3)
    finally:
        ort.close()
        other.close()


# ---------------------------------------------------------------------------------------- form picking
def test_form_table_and_picking(exports):
    from sparseyolo.runtime.forms import PREFERRED_INT8_FORM, cpu_class, int8_sibling, pick_int8_file, preferred_form

    for engine in ENGINES:  # one measured rule per engine and CPU class
        for cpu in ("vnni", "avx2"):
            rule = PREFERRED_INT8_FORM[engine, cpu]
            assert rule.form in (None, "qdq", "qlinear") and " vs " in rule.why
    assert preferred_form("onnxruntime", "vnni") is None and preferred_form("deepsparse", "vnni") == "qlinear"
    assert cpu_class({"AVX2": True, "AVX-512 VNNI": False, "AVX-VNNI": False, "AMX-INT8": False}) == "avx2"
    assert cpu_class({"AVX2": True, "AVX-512 VNNI": True}) == "vnni" and cpu_class({}) == "vnni"
    qdq, ql, fp32 = exports["qdq"], exports["qlinear"], exports["fp32"]
    assert int8_sibling(qdq) == ql and int8_sibling(ql) == qdq
    for engine in ENGINES:
        want = preferred_form(engine)
        for given in (qdq, ql):
            path, note = pick_int8_file(given, engine)
            expected = given if want is None else {"qdq": qdq, "qlinear": ql}[want]
            assert path == expected, (engine, given.name, note)
            assert note.startswith(f"{engine}: running {expected.name}") and "\n" not in note
            if path != given:
                assert f"instead of {given.name}" in note and "--exact-file" in note
            exact, exact_note = pick_int8_file(given, engine, exact=True)
            assert exact == given and "--exact-file" in exact_note
    assert pick_int8_file(fp32, "deepsparse") == (fp32, None)  # float models are never swapped


def test_picking_without_a_sibling(exports, tmp_path, openvino_prefers_qdq):
    from sparseyolo.runtime.forms import pick_int8_file

    alone = tmp_path / "alone.qlinear.onnx"
    shutil.copy(exports["qlinear"], alone)
    path, note = pick_int8_file(alone, "openvino")
    assert path == alone
    assert note == "openvino: running alone.qlinear.onnx (QLinear): test rule, but there is no alone.onnx"


def _val_qlinear(cli, exports, tmp_path, engine: str, *extra: str):
    """``sparseyolo val`` of the QLinear export on ``engine``, ``extra`` flags appended: ``(rc, log)``."""
    return cli(
        "val", "--weights", exports["qlinear"], "--data", exports["data"], "--img", "64", "--batch-size", "4",
        "--workers", "0", "--noplots", "--engine", engine, "--project", tmp_path, "--name", "val", *extra,
    )  # fmt: skip


def test_val_and_detect_log_the_file_used(exports, cli, tmp_path, openvino_prefers_qdq):
    """Given the QLinear file, an engine that prefers QDQ runs the QDQ one and says so."""
    _need("openvino")
    rc, log = _val_qlinear(cli, exports, tmp_path, "openvino")
    assert rc == 0, log[-3000:]
    assert "openvino: running int8.onnx (QDQ) instead of int8.qlinear.onnx: test rule" in log
    rc, log = _val_qlinear(cli, exports, tmp_path, "openvino", "--exact-file")
    assert rc == 0 and "running int8.qlinear.onnx (QLinear) as named (--exact-file)" in log
    rc, log = cli(
        "detect", "--weights", exports["qlinear"], "--source", exports["images"], "--img", "64", "--engine", "OpenVINO",
        "--nosave", "--project", tmp_path, "--name", "det",
    )  # fmt: skip
    assert rc == 0, log[-3000:]
    assert "openvino: running int8.onnx (QDQ) instead of int8.qlinear.onnx" in log and "4 images" in log


def test_reference_engine_runs_the_qdq_file_and_refuses_qlinear(exports, cli, tmp_path, val_map):
    """``--engine onnxruntime-reference`` given the QLinear file runs its QDQ sibling (its exactness is
    tested in test_export.py) and scores what the QDQ file scores there; ``--exact-file`` on the QLinear
    file is one line saying why not."""
    rc, log = _val_qlinear(cli, exports, tmp_path, "onnxruntime-reference")
    assert rc == 0, log[-3000:]
    assert "onnxruntime-reference: running int8.onnx (QDQ) instead of int8.qlinear.onnx" in log
    reference = val_map("qdq", "onnxruntime-reference")
    assert reference[0] > 0.2 and f"{reference[0]:.3g}" in log
    assert abs(reference[0] - val_map("qdq", "onnxruntime")[0]) <= 0.05  # the same int8 model
    rc, log = _val_qlinear(cli, exports, tmp_path, "onnxruntime-reference", "--exact-file")
    assert rc != 0 and "runs QDQ files only, and this one has QLinearConv" in log


def test_benchmark_swaps_a_single_int8_file_only(exports, caplog, openvino_prefers_qdq):
    from sparseyolo.timing.runner import benchmark

    _need("openvino")
    kw = {"threads": 1, "time_s": 0.05, "warmup_s": 0, "progress": False}
    caplog.set_level(logging.INFO)
    ov, ort = benchmark([exports["qlinear"]], ["openvino", "onnxruntime"], **kw)
    assert (ov.status, ort.status) == ("ok", "ok"), (ov.message, ort.message)
    assert ov.model == str(exports["qdq"]) and ov.given == str(exports["qlinear"])
    assert "openvino: running int8.onnx (QDQ) instead of int8.qlinear.onnx" in caplog.text
    assert ort.model == ort.given == str(exports["qlinear"])  # ONNX Runtime runs both alike: as named
    both = benchmark([exports["qdq"], exports["qlinear"]], ["openvino"], **kw)
    assert [r.model for r in both] == [str(exports["qdq"]), str(exports["qlinear"])]  # listed: as given
    (exact,) = benchmark([exports["qlinear"]], ["openvino"], exact_files=True, **kw)
    assert exact.model == str(exports["qlinear"])


# --------------------------------------------------------------------------------------------- errors
def _one_line_error(rc: int, log: str, cmd: str, *needles: str) -> str:
    marker = f"sparseyolo {cmd}: error: "
    assert rc == 2 and marker in log, log[-3000:]
    line = next(ln for ln in log.splitlines() if marker in ln)
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    assert "Traceback" not in log
    return line


def test_engine_with_a_pt_file_is_an_error(exports, cli):
    pt = exports["pt"]
    rc, log = cli("val", "--weights", pt, "--data", exports["data"], "--engine", "openvino")
    _one_line_error(rc, log, "val", "--engine openvino", "engines apply to .onnx files", str(pt))
    rc, log = cli("detect", "--weights", pt, "--source", exports["images"], "--engine", "onnxruntime")
    _one_line_error(rc, log, "detect", "engines apply to .onnx files")


def test_missing_engine_is_one_line_with_install_hint(exports, cli, monkeypatch, tmp_path):
    import importlib.util

    from sparseyolo.runtime import engines

    def missing(self):
        raise ImportError("No module named 'openvino'", name="openvino")

    monkeypatch.setattr(engines.OpenVinoEngine, "_version", missing)
    rc, log = cli("val", "--weights", exports["qdq"], "--data", exports["data"], "--engine", "openvino")
    _one_line_error(rc, log, "val", "--engine openvino", "not installed", "pip install openvino")
    if importlib.util.find_spec("deepsparse") is None:  # no in-process DeepSparse: point at no worker venv
        monkeypatch.setenv("SPARSEYOLO_DEEPSPARSE_PYTHON", str(tmp_path / "none" / "python"))
        rc, log = cli("detect", "--weights", exports["qdq"], "--source", exports["images"], "--engine", "deepsparse")
        _one_line_error(rc, log, "detect", "--engine deepsparse", "not installed", "setup_deepsparse.sh")
    rc, log = cli("val", "--weights", exports["qdq"], "--data", exports["data"], "--engine", "tensorrt")
    assert rc == 2 and "invalid choice: 'tensorrt'" in log


# --------------------------------------------------------------------------------------------- report
def test_report_takes_map_from_the_named_engine(exports, val_map, tmp_path):
    from sparseyolo.analysis.report import build_report
    from sparseyolo.utils.errors import SparseYoloError

    _need("openvino")
    run = tmp_path / "exp"
    (run / "weights").mkdir(parents=True)
    shutil.copy(exports["qdq"], run / "weights" / "best.onnx")
    shutil.copy(exports["qlinear"], run / "weights" / "best.qlinear.onnx")
    kw = {"img": 64, "threads": 1, "time_s": 0.05, "warmup_s": 0, "progress": False, "export": False}
    rows = build_report([run], ["onnxruntime"], data=exports["data"], map_engine="openvino", **kw)
    assert [r.name for r in rows] == ["exp", "exp (qlinear)"]
    assert all(r.map_source == "onnx/openvino" for r in rows)
    # each row's own file (exact): the same numbers as `val --engine openvino --exact-file`
    assert rows[0].map50 == pytest.approx(val_map("qdq", "openvino")[0], abs=1e-9)
    assert rows[1].map50 == pytest.approx(val_map("qlinear", "openvino")[0], abs=1e-9)
    with pytest.raises(SparseYoloError, match="--map-engine openvino needs --data"):
        build_report([run], ["onnxruntime"], map_engine="openvino", **kw)


def test_report_map_engine_flag_errors(cli, tmp_path):
    rc, log = cli("report", tmp_path, "--map-engine", "openvino")
    _one_line_error(rc, log, "report", "--map-engine openvino needs --data")
    rc, log = cli("report", tmp_path, "--map-engine", "openvin", "--data", "x.yaml")
    _one_line_error(rc, log, "report", "unknown engine 'openvin'", "did you mean 'openvino'")

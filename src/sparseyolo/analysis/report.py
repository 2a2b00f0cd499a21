"""Results table for a series of training runs (dense baseline, pruned, pruned + quantized, ...):
recipe, mAP@0.5, compressed size on disk, images/s per engine (interleaved), epochs, wall time,
with ratios to a baseline run, plus a plot of mAP against speed-up."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from sparseyolo.timing.runner import BenchResult, benchmark
from sparseyolo.utils.errors import SparseYoloError, where
from sparseyolo.utils.logging import LOGGER

MAP50_KEYS = ("metrics/mAP_0.5", "metrics/mAP50", "mAP50", "mAP@0.5", "mAP_0.5")
MAP_KEYS = ("metrics/mAP_0.5:0.95", "metrics/mAP50-95", "mAP50-95", "mAP@0.5:0.95", "mAP_0.5:0.95")


@dataclass
class RunInfo:
    """What the report needs from one ``runs/train/expN`` folder."""

    name: str
    dir: Path
    weights: Path | None = None
    onnx: Path | None = None
    recipe: str | None = None
    epochs: int | None = None  # planned (opt.yaml)
    epochs_done: int | None = None  # rows in results.csv
    wall_time_s: float | None = None
    map50: float | None = None
    map50_95: float | None = None
    map_source: str = ""
    size_raw: int | None = None
    size_gzip: int | None = None
    bench: dict[str, BenchResult] = field(default_factory=dict)  # engine -> result


def read_results_csv(path: Path) -> tuple[float | None, float | None, int]:
    """(mAP@0.5, mAP@0.5:0.95) of the best-fitness epoch (0.1*mAP50 + 0.9*mAP50-95, the one best.pt
    keeps) and the number of epochs logged."""
    with open(path, newline="") as f:
        rows = [{k.strip(): (v or "").strip() for k, v in r.items() if k} for r in csv.DictReader(f)]
    if not rows:
        return None, None, 0
    k50 = next((k for k in MAP50_KEYS if k in rows[0]), None)
    k95 = next((k for k in MAP_KEYS if k in rows[0]), None)
    if k50 is None:
        raise SparseYoloError(f"{path}: no mAP@0.5 column (looked for {', '.join(MAP50_KEYS)})")
    best, best_fit = (None, None), -math.inf
    for r in rows:
        m50, m95 = _num(r.get(k50)), _num(r.get(k95)) if k95 else None
        if m50 is None:
            continue  # epoch without validation
        fit = 0.1 * m50 + 0.9 * (m95 if m95 is not None else m50)
        if fit > best_fit:
            best, best_fit = (m50, m95), fit
    return best[0], best[1], len(rows)


def _num(text: str | None) -> float | None:
    try:
        v = float(text)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def find_onnx(run_dir: Path) -> Path | None:
    """``weights/best.onnx``, else another ONNX in weights/ (best* first), else one in the run folder."""
    w = run_dir / "weights"
    if (w / "best.onnx").exists():
        return w / "best.onnx"
    found = sorted(w.glob("*.onnx"), key=lambda p: (not p.name.startswith("best"), p.name)) if w.is_dir() else []
    found = found or sorted(run_dir.glob("*.onnx"))
    return found[0] if found else None


def read_run(run_dir: str | Path) -> RunInfo:
    """Parse opt.yaml, results.csv, weights/ of a training run folder (missing pieces stay None)."""
    import yaml

    d = Path(run_dir)
    if not d.is_dir():
        raise SparseYoloError(f"{d}: not a run folder (expected runs/train/expN with weights/ and results.csv)")
    run = RunInfo(name=d.name, dir=d)
    opt_path = d / "opt.yaml"
    opt = {}
    if opt_path.exists():
        try:
            opt = yaml.safe_load(opt_path.read_text()) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            raise SparseYoloError(
                f"{where(opt_path, None if mark is None else mark.line + 1)}: invalid YAML: "
                f"{getattr(e, 'problem', None) or e}"
            ) from None
    run.recipe = str(opt["recipe"]) if opt.get("recipe") else None
    run.epochs = int(opt["epochs"]) if opt.get("epochs") is not None else None
    res = d / "results.csv"
    if res.exists():
        run.map50, run.map50_95, run.epochs_done = read_results_csv(res)
        run.map_source = "results.csv" if run.map50 is not None else ""
        if opt_path.exists():  # opt.yaml is written at the start, results.csv after every epoch
            run.wall_time_s = max(0.0, res.stat().st_mtime - opt_path.stat().st_mtime)
    best = d / "weights" / "best.pt"
    run.weights = best if best.exists() else None
    if run.weights is not None:
        _metrics_from_checkpoint(run)
    run.onnx = find_onnx(d)
    if run.weights is None and run.onnx is None:
        raise SparseYoloError(f"{d}: no weights/best.pt and no .onnx file")
    return run


def with_qlinear_rows(runs: list[RunInfo]) -> list[RunInfo]:
    """Each run, followed by a ``NAME (qlinear)`` row for the QLinearConv form of its int8 export
    (``best.qlinear.onnx`` beside ``best.onnx``) when there is one: engines differ in which int8
    form they run faster (DeepSparse runs QLinearConv natively)."""
    rows = []
    for run in runs:
        rows.append(run)
        if run.onnx is not None and (q := run.onnx.with_name(f"{run.onnx.stem}.qlinear.onnx")).is_file():
            rows.append(replace(run, name=f"{run.name} (qlinear)", onnx=q, bench={}))
    return rows


def _metrics_from_checkpoint(run: RunInfo) -> None:
    """Use the mAP stored in ``best.pt`` itself when it has one. The best-fitness row of results.csv
    can be a different epoch: a recipe run restarts best-model selection when pruning ends and when
    QAT starts, so its best row may be a denser model that best.pt no longer holds."""
    from sparseyolo.models.checkpoint import load_checkpoint

    try:
        metrics = load_checkpoint(run.weights, mmap=True).get("metrics") or {}
    except SparseYoloError as e:
        LOGGER.warning(f"{run.name}: mAP taken from results.csv ({e})")
        return
    m50, m95 = _num(metrics.get("mAP50")), _num(metrics.get("mAP50-95"))
    if m50 is not None:
        run.map50, run.map50_95, run.map_source = m50, m95, "best.pt"


def export_missing(run: RunInfo, img: int) -> None:
    """Export ``weights/best.pt`` to ``weights/best.onnx`` (sparseyolo.exporters) when no ONNX exists."""
    if run.onnx is not None or run.weights is None:
        return
    from sparseyolo.runtime.loading import load_torch_model

    try:
        from sparseyolo.exporters.onnx import export_onnx
    except ImportError as e:
        raise SparseYoloError(f"{run.dir}: no ONNX file and the exporter is unavailable ({e})") from None
    model, _ = load_torch_model(run.weights)
    target = run.weights.with_suffix(".onnx")
    LOGGER.info(f"{run.name}: exporting {run.weights} -> {target} at {img}")
    run.onnx = Path(export_onnx(model, target, img_size=(img, img)))


def measure_size(run: RunInfo) -> None:
    from sparseyolo.exporters.size import gzip_size

    if run.onnx is not None:
        run.size_raw = run.onnx.stat().st_size
        run.size_gzip = gzip_size(run.onnx)


def revalidate(run: RunInfo, data: str, img: int, engine: str | None = None) -> None:
    """mAP of the exported ONNX itself (``runtime.val.run``), replacing the training log's number.

    ``engine`` (default onnxruntime) runs it; the row's own file runs (``exact_file``: a report row
    names one int8 form), and ``map_source`` says ``onnx`` or ``onnx/<engine>``."""
    import tempfile

    from sparseyolo.runtime.val import run as val_run

    with tempfile.TemporaryDirectory(prefix="sparseyolo-report-") as tmp:  # leave the run folder untouched
        metrics, _, _ = val_run(
            run.onnx,
            data,
            img_size=img,
            batch_size=1,
            project=tmp,
            name="val",
            exist_ok=True,
            plots=False,
            engine=engine,
            exact_file=True,
        )
    run.map50, run.map50_95 = float(metrics["mAP50"]), float(metrics["mAP50-95"])
    run.map_source = f"onnx/{engine}" if engine else "onnx"


def build_report(
    run_dirs: list[str | Path],
    engines: list[str],
    img: int | None = None,
    batch_size: int | None = None,
    threads: int | None = None,
    time_s: float = 10.0,
    warmup_s: float = 2.0,
    export: bool = True,
    data: str | None = None,
    progress: bool = True,
    map_engine: str | None = None,
) -> list[RunInfo]:
    """Read every run, export missing ONNX files, optionally re-validate (``data``; on ``map_engine``,
    default onnxruntime), benchmark all interleaved. Each row's file is benchmarked as named (a run's
    two int8 forms are two rows)."""
    if not run_dirs:
        raise SparseYoloError("no run folder given")
    if map_engine is not None:
        if not data:
            raise SparseYoloError(f"--map-engine {map_engine} needs --data (the dataset to re-validate on)")
        from sparseyolo.runtime.engines import require_engine

        map_engine = require_engine(map_engine, "--map-engine").name  # fail before any export or benchmark
    runs = [read_run(d) for d in run_dirs]
    for run in runs:
        if export:
            export_missing(run, img or 512)
        if run.onnx is None:
            raise SparseYoloError(f"{run.dir}: no .onnx file next to weights/best.pt (export it, or drop --no-export)")
    runs = with_qlinear_rows(runs)
    for run in runs:
        measure_size(run)
        if data:
            revalidate(run, data, img or 512, map_engine)
    img_hw = (img, img) if img else None
    results = benchmark(
        [r.onnx for r in runs],
        engines,
        batch_size=batch_size,
        img=img_hw,
        threads=threads,
        time_s=time_s,
        warmup_s=warmup_s,
        progress=progress,
        exact_files=True,
    )
    by_model = {}
    for res in results:
        by_model.setdefault(res.given or res.model, {})[res.engine] = res
    for run in runs:
        run.bench = by_model.get(str(run.onnx), {})
    return runs

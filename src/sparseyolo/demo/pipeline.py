"""``sparseyolo demo``: the whole sparseyolo workflow on a built-in dataset, with nothing supplied.

Stages (each prints a heading; a failure stops the demo with the stage's name):

1. data      - the built-in shapes dataset (:func:`sparseyolo.data.synthetic.make_shapes_dataset`);
2. baseline  - a narrow YOLOv3-tiny trained from scratch;
3. channel_pruned_quantized - ``yolov3-tiny.channel_pruned_quantized`` from the baseline's ``best.pt``
               (shortened by recipe args): 45% of the channels of every prunable conv but the first pruned and
               cut out (thinning), recovery, int8 QAT;
4. export    - ONNX of both runs at the training size (for mAP) and at the larger benchmark size
               (for speed): FP32, and QDQ + QLinearConv for the QAT run, with FLOPs and size;
5. report    - mAP of each exported ONNX on the val split, interleaved ONNX Runtime benchmark at the
               benchmark size, and the report table of :mod:`sparseyolo.analysis.report_output`.

Everything goes under ``cfg.out``: ``shapes/`` (data), ``runs/<stage>/`` (training runs with
``weights/best.pt``, ``best.onnx`` and ``best-<bench_img>.onnx``), ``report.md``, ``report.json``,
``report.png``.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparseyolo.demo.settings import (
    CHANNEL_RECIPE,
    CHANNEL_SPARSITY,
    DemoConfig,
    channel_recipe_args,
    hyp_dict,
    model_yaml,
    write_yaml,
)
from sparseyolo.demo.stages import StageRunner, format_seconds
from sparseyolo.utils.errors import ConfigError
from sparseyolo.utils.logging import LOGGER

MARKER = ".sparseyolo-demo"
ENGINE = "onnxruntime"
# settings that change what is trained: --keep refuses to mix runs made with different values
TRAINING_KEYS = (
    "img",
    "width",
    "n_train",
    "n_val",
    "epochs",
    "sparse_epochs",
    "batch_size",
    "seed",
    "baseline_hyp",
    "sparse_hyp",
)


@dataclass
class TrainStage:
    """One training run of the demo."""

    name: str  # run folder name under out/runs and the report row
    title: str
    weights: str = ""  # initial weights ("" = from scratch)
    recipe: str | None = None
    recipe_args: dict[str, Any] = field(default_factory=dict)
    hyp: str = ""  # hyperparameter YAML path
    epochs: int = 0
    optimizer: str = "SGD"
    noval: bool = False  # validate the final epoch only


@dataclass
class DemoResult:
    """What :func:`run_demo` produced."""

    out: Path
    data: Path
    run_dirs: list[Path]
    onnx: dict[str, list[Path]]  # run name -> exported files (training size, then benchmark size;
    # FP32 or QDQ first, then QLinear)
    sparsity: dict[str, float]  # exported file name -> conv-weight sparsity
    flops: dict[str, float]  # exported file name -> conv / linear FLOPs at its input size
    runs: list[Any]  # benchmark.report.RunInfo rows of the table
    table: str
    notes: str
    stage_times: dict[str, float]
    wall_time_s: float


def prepare_out(cfg: DemoConfig) -> Path:
    """Create ``cfg.out``; without ``--keep`` a previous demo there is removed first.

    A non-empty folder that no demo created (no marker file) is never touched.
    """
    import json

    out = Path(cfg.out)
    marker = out / MARKER
    if out.exists() and not out.is_dir():
        raise ConfigError(f"demo: --out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not marker.exists():
        raise ConfigError(
            f"demo: --out {out} is not empty and was not made by 'sparseyolo demo'; "
            f"choose another --out (nothing was deleted)"
        )
    if marker.exists() and cfg.keep:
        previous = json.loads(marker.read_text() or "{}")
        changed = [k for k in TRAINING_KEYS if k in previous and previous[k] != cfg.to_dict()[k]]
        if changed:
            raise ConfigError(
                f"demo: --keep, but {out} was made with different settings ({', '.join(changed)}); "
                f"drop --keep to start over or use another --out"
            )
    elif marker.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    from sparseyolo.utils.io import atomic_write_text

    atomic_write_text(marker, json.dumps(cfg.to_dict(), indent=1))
    return out


def training_stages(cfg: DemoConfig, out: Path) -> list[TrainStage]:
    """The two runs with their config files written under ``out``."""
    base_best = str(out / "runs" / "baseline" / "weights" / "best.pt")
    hyp_base = write_yaml(out / "hyp.baseline.yaml", hyp_dict("scratch", cfg.baseline_hyp))
    hyp_pq = write_yaml(out / "hyp.pruned_quantized.yaml", hyp_dict("pruned_quantized", cfg.sparse_hyp))
    args = channel_recipe_args(cfg.sparse_epochs, cfg.width)
    return [
        TrainStage(
            "baseline",
            f"dense baseline: YOLOv3-tiny x{cfg.width:g} from scratch, {cfg.epochs} epochs, "
            f"{cfg.img} px (validated at the end)",
            hyp=str(hyp_base),
            epochs=cfg.epochs,
            optimizer="Adam",
            # validating every epoch of a model still learning cost ~40% of the stage (NMS over
            # thousands of low-confidence boxes); without it best.pt is the last epoch, which is
            # where a short from-scratch run is best anyway (its mAP still rises at the end)
            noval=True,
        ),
        TrainStage(
            "channel_pruned_quantized",
            f"channel pruned + quantized: {CHANNEL_RECIPE} from the baseline, {cfg.sparse_epochs} epochs "
            f"({CHANNEL_SPARSITY:.0%} of the channels removed by epoch {args['pruning_end_epoch']:g}, "
            f"int8 QAT for the last {args['quantization_epochs']:g})",
            weights=base_best,
            recipe=CHANNEL_RECIPE,
            recipe_args=args,
            hyp=str(hyp_pq),
            epochs=cfg.sparse_epochs,
        ),
    ]


def run_finished(run_dir: Path) -> bool:
    """A training run that logged all its epochs and has ``weights/best.pt``."""
    from sparseyolo.analysis.report import read_run
    from sparseyolo.utils.errors import SparseYoloError

    if not (run_dir / "weights" / "best.pt").exists():
        return False
    try:
        info = read_run(run_dir)
    except SparseYoloError:
        return False
    return info.epochs is not None and (info.epochs_done or 0) >= info.epochs


def train_stage(cfg: DemoConfig, st: TrainStage, data: Path, model_cfg: Path, project: Path) -> Path:
    """Train one run (or reuse a finished one with ``--keep``); returns the run folder."""
    from sparseyolo.engine.trainer import train

    run_dir = project / st.name
    if cfg.keep and run_finished(run_dir):
        print(f"--keep: reusing the finished run {run_dir}")
        return run_dir
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an unfinished run from an interrupted demo: start it over
    if st.recipe:
        print(f"recipe {st.recipe} with args {st.recipe_args}")
    return Path(
        train(
            weights=st.weights,
            cfg="" if st.weights else str(model_cfg),
            data=str(data),
            hyp=st.hyp,
            recipe=st.recipe,
            recipe_args=dict(st.recipe_args),
            epochs=st.epochs,
            # one optimizer step per batch: the shapes set is far smaller than the datasets
            # the default nominal batch of 64 was tuned for
            batch_size=cfg.batch_size,
            nbs=cfg.batch_size,
            img_size=cfg.img,
            optimizer=st.optimizer,
            project=str(project),
            name=st.name,
            exist_ok=True,
            workers=cfg.workers,
            seed=cfg.seed,
            noplots=True,
            tensorboard=False,
            patience=0,
            noval=st.noval,
        )
    )


def bench_name(path: Path, bench_img: int) -> Path:
    """``best.onnx`` -> ``best-416.onnx``, ``best.qlinear.onnx`` -> ``best-416.qlinear.onnx``."""
    stem, _, rest = path.name.partition(".")
    return path.with_name(f"{stem}-{bench_img}.{rest}")


def export_run(run_dir: Path, img: int, bench_img: int) -> list[Path]:
    """``weights/best.pt`` -> ``best.onnx`` at ``img`` (FP32, or QDQ for QAT) and ``best.qlinear.onnx``
    (QAT), then the same at ``bench_img`` (``best-<bench_img>.onnx`` ...): same weights, larger input."""
    from sparseyolo.exporters import export_onnx, export_qlinear
    from sparseyolo.models.weights import load_model
    from sparseyolo.quantization import is_qat_model

    best = run_dir / "weights" / "best.pt"
    model, _ = load_model(best)
    model = model.float().eval()
    files = []
    for size in dict.fromkeys((img, bench_img)):
        onnx_path = best.with_suffix(".onnx") if size == img else bench_name(best.with_suffix(".onnx"), size)
        files.append(Path(export_onnx(model, onnx_path, img_size=(size, size))))
        if is_qat_model(model):
            files.append(
                Path(export_qlinear(files[-1], onnx_path.with_name(onnx_path.name.replace(".onnx", ".qlinear.onnx"))))
            )
    return files


def onnx_stats(path: Path) -> tuple[float, float | None]:
    """(fraction of zero conv / linear weights, their FLOPs) of an ONNX file at its own input size
    (int8 weights count for QDQ / QLinear)."""
    import onnx

    from sparseyolo.analysis.layers import analyze_onnx

    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    totals = analyze_onnx(path, img=(dims[2].dim_value, dims[3].dim_value)).totals()
    return float(totals["sparsity"]), (float(totals["flops"]) if totals["flops"] else None)


def export_summary(onnx: dict[str, list[Path]], sparsity: dict[str, float], flops: dict[str, float]) -> str:
    from sparseyolo.exporters.size import file_size, human
    from sparseyolo.timing.output import markdown_table

    rows = []
    for run, files in onnx.items():
        for f in files:
            fs = file_size(f)
            gf = flops.get(str(f))
            rows.append(
                [
                    run,
                    f.name,
                    human(fs.raw),
                    human(fs.gzip),
                    "?" if gf is None else f"{gf / 1e9:.3f}",
                    f"{100 * sparsity[str(f)]:.1f}%",
                ]
            )
    return markdown_table(["run", "file", "size", "gzip -9", "GFLOPs", "conv weights = 0"], rows, align="llrrrr")


def report_rows(run_dirs: list[Path], data: Path, cfg: DemoConfig) -> list[Any]:
    """The report's rows, built with ``sparseyolo report``'s own pieces: every run's ``best.onnx``
    plus the QLinearConv form of the QAT run, each re-validated as ONNX on the val split at the
    training size, then their ``best-<bench_img>`` twins (same weights) sized and benchmarked
    interleaved on ONNX Runtime at the benchmark size."""
    from sparseyolo.analysis.report import measure_size, read_run, revalidate, with_qlinear_rows
    from sparseyolo.timing.runner import benchmark

    runs = with_qlinear_rows([read_run(d) for d in run_dirs])
    print(
        f"validating every ONNX file on the val split at {cfg.img} px, then benchmarking them interleaved on "
        f"{ENGINE} at {cfg.bench_img} px, {cfg.threads} threads, {cfg.bench_time:g}s each"
    )
    for run in runs:
        revalidate(run, str(data), cfg.img)
        run.onnx = bench_name(run.onnx, cfg.bench_img) if cfg.bench_img != cfg.img else run.onnx
        measure_size(run)
    results = benchmark(
        [r.onnx for r in runs],
        [ENGINE],
        batch_size=1,
        img=(cfg.bench_img, cfg.bench_img),
        threads=cfg.threads,
        time_s=cfg.bench_time,
        warmup_s=cfg.bench_warmup,
    )
    by_model = {res.model: res for res in results}
    for run in runs:
        run.bench = {ENGINE: by_model[str(run.onnx)]} if str(run.onnx) in by_model else {}
    return runs


def run_demo(cfg: DemoConfig) -> DemoResult:
    """Run every stage; returns the result (the table is also written to ``out/report.md``)."""
    import json

    import torch

    from sparseyolo.analysis.report_output import plot_report, report_json, report_notes, report_table
    from sparseyolo.data.synthetic import make_shapes_dataset
    from sparseyolo.utils.io import atomic_write_text

    t_start = time.perf_counter()
    out = prepare_out(cfg)
    stages = training_stages(cfg, out)
    runner = StageRunner(len(stages) + 3, out / "demo-error.log")
    threads_before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        with runner.stage(
            "data",
            f"built-in shapes dataset: {cfg.n_train} train / {cfg.n_val} val images, " f"{cfg.img} px, 3 classes",
        ):
            data = make_shapes_dataset(
                out / "shapes", n_train=cfg.n_train, n_val=cfg.n_val, img_size=cfg.img, seed=cfg.seed
            )
            model_cfg = write_yaml(out / f"yolov3-tiny-x{cfg.width:g}.yaml", model_yaml(cfg.width))
            print(f"data: {data}\nmodel: {model_cfg}")
        run_dirs = []
        for st in stages:
            with runner.stage(st.name, st.title):
                run_dirs.append(train_stage(cfg, st, data, model_cfg, out / "runs"))
        onnx: dict[str, list[Path]] = {}
        sparsity: dict[str, float] = {}
        flops: dict[str, float] = {}
        sizes = f"{cfg.img}x{cfg.img} (mAP) and {cfg.bench_img}x{cfg.bench_img} (speed)"
        with runner.stage("export", f"ONNX export at {sizes}: FP32; QDQ + QLinearConv for QAT"):
            for d in run_dirs:
                onnx[d.name] = export_run(d, cfg.img, cfg.bench_img)
                for f in onnx[d.name]:
                    sparsity[str(f)], gf = onnx_stats(f)
                    if gf is not None:
                        flops[str(f)] = gf
            print(export_summary(onnx, sparsity, flops))
        with runner.stage("report", f"ONNX mAP on the val split, {ENGINE} benchmark and the report"):
            runs = report_rows(run_dirs, data, cfg)
            base = runs[0]
            table = report_table(runs, [ENGINE], base)
            notes = report_notes(runs, [ENGINE], base) + (
                f"\nmAP of each model exported at the training size ({cfg.img} px); speed of the same weights "
                f"exported at {cfg.bench_img} px (best-{cfg.bench_img}.onnx): the models are fully convolutional."
                if cfg.bench_img != cfg.img
                else ""
            )
            atomic_write_text(out / "report.md", table + "\n\n" + notes + "\n")
            atomic_write_text(out / "report.json", json.dumps(report_json(runs, [ENGINE], base), indent=2))
            plot_report(runs, [ENGINE], base, out / "report.png")
    finally:
        torch.set_num_threads(threads_before)
    wall = time.perf_counter() - t_start
    LOGGER.debug(f"demo stage times: {runner.times}")
    return DemoResult(
        out=out,
        data=data,
        run_dirs=run_dirs,
        onnx=onnx,
        sparsity=sparsity,
        flops=flops,
        runs=runs,
        table=table,
        notes=notes,
        stage_times=dict(runner.times),
        wall_time_s=wall,
    )


def summary(result: DemoResult) -> str:
    """The closing text: the report table, its notes, stage times and where the files are."""
    times = ", ".join(f"{k} {format_seconds(v)}" for k, v in result.stage_times.items())
    return (
        f"\n{result.table}\n\n{result.notes}\n\n"
        f"demo finished in {format_seconds(result.wall_time_s)} ({times})\n"
        f"report: {result.out / 'report.md'}, {result.out / 'report.json'}, {result.out / 'report.png'}\n"
        f"runs:   {', '.join(str(d) for d in result.run_dirs)}"
    )

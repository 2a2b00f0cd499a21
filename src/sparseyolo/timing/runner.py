"""Interleaved benchmark: every (model, engine) pair runs in short alternating slices (A B A B ...),
so background load on a shared machine hits all of them alike and their ratios stay honest."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from sparseyolo.runtime.engines import Engine, EngineUnavailable, Runner, get_engine
from sparseyolo.runtime.forms import int8_sibling, pick_int8_file
from sparseyolo.runtime.onnx_info import ModelInfo, read_model_info, resolve_input_shapes
from sparseyolo.utils.errors import SparseYoloError
from sparseyolo.utils.logging import LOGGER


@dataclass
class BenchResult:
    """One model on one engine. ``status`` is "ok", "unavailable" (engine not installed) or "error".

    ``model`` is the file that ran; ``given`` the file the caller named (they differ when the engine
    got the other int8 form of an export, which ``form_note`` explains)."""

    model: str
    engine: str
    status: str = "ok"
    message: str = ""
    engine_version: str = ""
    batch_size: int = 0
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    input_dtypes: dict[str, str] = field(default_factory=dict)
    threads: int | None = None
    iterations: int = 0
    seconds: float = 0.0
    images_per_s: float | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)  # mean, p50, p90, p99, min
    ratio: float | None = None  # images/s vs. the first model on the first engine
    ratio_same_engine: float | None = None  # images/s vs. the first model on this engine
    given: str = ""
    form_note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def latency_stats(latencies_s: list[float]) -> dict[str, float]:
    """Mean / min / percentiles of per-inference latencies, in milliseconds."""
    ms = np.asarray(latencies_s, dtype=np.float64) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"mean": float(ms.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99), "min": float(ms.min())}


def _slice_seconds(time_s: float, n_runners: int) -> float:
    """Slice length: ~10 rounds per run, between 20 ms and 1 s, so alternation is frequent."""
    return min(1.0, max(0.02, time_s / 10.0))


def benchmark(
    models: list[str | Path],
    engines: list[str],
    batch_size: int | None = None,
    img: tuple[int, int] | None = None,
    threads: int | None = None,
    time_s: float = 10.0,
    warmup_s: float = 2.0,
    seed: int = 0,
    progress: bool = True,
    exact_files: bool = False,
) -> list[BenchResult]:
    """Benchmark every model on every engine, interleaved; returns one result per (model, engine).

    ``batch_size`` / ``img`` of None mean "flag not given" (defaults 1 / 512, and a model's static
    shape wins with a warning); an explicit value that conflicts with a static shape raises.
    A missing engine or a model an engine cannot compile gives a non-"ok" row, not an exception.

    An int8 export named alone (``W.onnx`` without ``W.qlinear.onnx`` in ``models``, or the other way
    round) runs on each engine in the form that engine runs fastest (:mod:`sparseyolo.runtime.forms`),
    logged; when both forms are listed, or with ``exact_files``, every file runs as named.
    """
    if not models:
        raise SparseYoloError("no model given")
    infos = [read_model_info(m) for m in models]  # fail on bad files before loading anything
    shapes = [resolve_input_shapes(info, batch_size, img) for info in infos]
    listed = {Path(m).resolve() for m in models}
    known: dict[Path, tuple[ModelInfo, dict]] = {}
    results: list[BenchResult] = []
    runners: list[tuple[BenchResult, Runner]] = []
    try:
        for eng_name in engines:
            engine = get_engine(eng_name)
            ok, version = engine.available()
            for given, given_shp in zip(infos, shapes, strict=False):
                info, shp, note = given, given_shp, ""
                if ok and not exact_files and int8_sibling(given.path).resolve() not in listed:
                    path, note = pick_int8_file(given.path, eng_name, info=given)
                    note = note or ""
                    if note:
                        LOGGER.info(note)
                    if path != given.path:
                        if path not in known:
                            sub = read_model_info(path)
                            known[path] = (sub, resolve_input_shapes(sub, batch_size, img))
                        info, shp = known[path]
                res = _new_result(info, shp, eng_name, threads)
                res.given, res.form_note = str(given.path), note
                results.append(res)
                if not ok:
                    res.status, res.message = "unavailable", version
                    continue
                res.engine_version = version
                runner = _load(engine, info, shp, threads, seed, res)
                if runner is not None:
                    runners.append((res, runner))
        if runners:
            _run_interleaved(runners, time_s, warmup_s, progress)
    finally:
        for _, runner in runners:
            runner.release()
    _fill_ratios(results, engines)
    return results


def _new_result(info: ModelInfo, shp: dict, engine: str, threads: int | None) -> BenchResult:
    first = next(iter(shp.values()))
    return BenchResult(
        model=str(info.path),
        engine=engine,
        batch_size=int(first[0]) if first else 1,
        input_shapes={k: list(v) for k, v in shp.items()},
        input_dtypes={i.name: i.dtype for i in info.inputs},
        threads=threads,
    )


def _load(engine: Engine, info: ModelInfo, shp: dict, threads, seed, res: BenchResult) -> Runner | None:
    try:
        return engine.load(
            info.path,
            res.batch_size,
            threads,
            shp,
            res.input_dtypes,
            static=all(i.static for i in info.inputs),
            seed=seed,
        )
    except EngineUnavailable as e:
        res.status, res.message = "unavailable", str(e)
    except SparseYoloError as e:
        res.status, res.message = "error", str(e)
    LOGGER.warning(f"{engine.name}: {res.message}")
    return None


def _run_interleaved(runners: list[tuple[BenchResult, Runner]], time_s: float, warmup_s: float, progress: bool) -> None:
    from tqdm import tqdm

    for res, runner in runners:  # warm-up: first-run allocations, JIT, thread pools, caches
        try:
            runner.time_slice(warmup_s, min_iters=1)
        except SparseYoloError as e:
            res.status, res.message = "error", str(e)
    active = [(res, r) for res, r in runners if res.status == "ok"]
    latencies: dict[int, list[float]] = {id(res): [] for res, _ in active}
    slice_s = _slice_seconds(time_s, len(active))
    total = time_s * len(active)
    bar = tqdm(
        total=round(total, 2),
        desc="benchmark",
        unit="s",
        disable=not progress,
        leave=False,
        bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f}s [{elapsed}<{remaining}]",
    )
    start = time.perf_counter()
    try:
        while active:
            for res, runner in list(active):
                try:
                    lat = runner.time_slice(slice_s, min_iters=1)
                except SparseYoloError as e:
                    res.status, res.message = "error", str(e)
                    active.remove((res, runner))
                    continue
                latencies[id(res)].extend(lat)
                before = min(res.seconds, time_s)
                res.seconds += float(sum(lat))
                bar.update(min(res.seconds, time_s) - before)
                if res.seconds >= time_s:
                    active.remove((res, runner))
    finally:
        bar.close()
    LOGGER.debug(f"benchmark wall time {time.perf_counter() - start:.1f}s")
    for res, _ in runners:
        lat = latencies.get(id(res))
        if res.status == "ok" and lat:
            res.iterations = len(lat)
            res.latency_ms = latency_stats(lat)
            res.images_per_s = res.batch_size * len(lat) / sum(lat)


def _fill_ratios(results: list[BenchResult], engines: list[str]) -> None:
    ok = [r for r in results if r.status == "ok" and r.images_per_s]
    if not ok:
        return
    first_model = results[0].given or results[0].model  # by the file named: an engine may run its sibling
    # the first model on the first engine that ran it (a missing first engine does not void the ratios)
    base = next((r for e in engines for r in ok if (r.given or r.model) == first_model and r.engine == e), None)
    for r in ok:
        same = next((b for b in ok if (b.given or b.model) == first_model and b.engine == r.engine), None)
        r.ratio = r.images_per_s / base.images_per_s if base else None
        r.ratio_same_engine = r.images_per_s / same.images_per_s if same else None

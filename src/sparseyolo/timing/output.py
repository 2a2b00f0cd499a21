"""Benchmark results as Markdown tables and JSON documents."""

from __future__ import annotations

import json
from pathlib import Path

from sparseyolo.timing.runner import BenchResult
from sparseyolo.utils.system import machine_line, system_info
from sparseyolo.utils.tables import markdown_table


def _short_names(paths: list[str]) -> dict[str, str]:
    """File names, or parent/name where two models share a file name (best.onnx in several runs)."""
    names = {p: Path(p).name for p in paths}
    if len(set(names.values())) < len(set(paths)):
        names = {p: str(Path(*Path(p).parts[-3:])) for p in paths}
    return names


def results_table(results: list[BenchResult]) -> str:
    """Markdown table: model, engine, batch, img/s, latency p50/p90/p99 (ms), ratio to the first row."""
    names = _short_names([r.model for r in results])
    multi_engine = len({r.engine for r in results}) > 1
    header = ["model", "engine", "batch", "img/s", "p50 ms", "p90 ms", "p99 ms", "x base"]
    if multi_engine:
        header.append("x same engine")
    rows = []
    for r in results:
        if r.status != "ok":
            row = [
                names[r.model],
                r.engine,
                r.batch_size,
                "not installed" if r.status == "unavailable" else "error",
                "",
                "",
                "",
                "",
            ]
        else:
            lat = r.latency_ms
            row = [
                names[r.model],
                r.engine,
                r.batch_size,
                f"{r.images_per_s:.1f}",
                f"{lat['p50']:.2f}",
                f"{lat['p90']:.2f}",
                f"{lat['p99']:.2f}",
                _ratio(r.ratio),
            ]
        if multi_engine:
            row.append(_ratio(r.ratio_same_engine) if r.status == "ok" else "")
        rows.append(row)
    return markdown_table(header, rows, align="llr" + "r" * (len(header) - 3))


def results_notes(results: list[BenchResult]) -> str:
    """The machine the figures were measured on (CPU, cores, int8 ISA flags), then one line per engine
    that is missing and per model an engine could not run (the table says only 'not installed' / 'error')."""
    names = _short_names([r.model for r in results])
    seen, lines = set(), [f"Machine: {machine_line()}"]
    for r in results:
        if r.status == "unavailable" and r.engine not in seen:
            seen.add(r.engine)
            lines.append(f"{r.engine}: {r.message}")
        elif r.status == "error":
            lines.append(f"{r.engine} / {names[r.model]}: {r.message}")
    return "\n".join(lines)


def _ratio(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}x"


def results_json(results: list[BenchResult], settings: dict) -> str:
    """JSON document: settings, system info (CPU, ISA flags, engine versions) and one entry per (model, engine)."""
    versions = {r.engine: r.engine_version for r in results if r.engine_version}
    doc = {"settings": settings, "system": system_info(versions), "results": [r.to_dict() for r in results]}
    return json.dumps(doc, indent=2)

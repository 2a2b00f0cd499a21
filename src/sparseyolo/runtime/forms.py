"""Which int8 file of an export each engine gets.

A quantized export writes two forms of one model: ``W.onnx`` (QDQ: QuantizeLinear/DequantizeLinear
around float ops) and ``W.qlinear.onnx`` (QOperator: ``QLinearConv``, Conv only by default). Engines
differ in which one they run faster, so ``val``, ``detect`` and ``benchmark`` take either file and run
the form the chosen engine prefers (:func:`pick_int8_file`), logging one line that says which file
ran and why. ``--exact-file`` turns this off.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sparseyolo.runtime.onnx_info import ModelInfo, read_model_info
from sparseyolo.utils.logging import LOGGER

INT8_FORMS = ("qdq", "qlinear")
FORM_LABEL = {"qdq": "QDQ", "qlinear": "QLinear", "fp32": "fp32", "float": "float"}
QLINEAR_SUFFIX = ".qlinear.onnx"


@dataclass(frozen=True)
class FormRule:
    """``form``: the int8 form the engine runs fastest, or None when it runs both alike (the file
    named is used as is); ``why``: the measurement behind it, for the log line."""

    form: str | None
    why: str


_REFERENCE_RULE = FormRule("qdq", "the reference engine computes QDQ exactly (QLinearConv is an int8 kernel)")

# The one table: (engine, CPU class) -> rule. "vnni": int8 dot-product instructions (AVX-512 VNNI,
# AVX-VNNI or AMX); "avx2": without them. Measured with `sparseyolo benchmark` (interleaved slices,
# batch 1, 2 threads), speed-ups vs. the fp32 export on the same engine; docs/results.md, "Which int8
# file each engine gets". The Conv-only QLinear form is the exporter's default.
# - onnxruntime, VNNI (AMD EPYC, AVX-512 VNNI): YOLOv3-SPP 512 QDQ 2.86x vs QLinear 2.88x: alike;
# - onnxruntime, AVX2 (AMD EPYC, no VNNI/AMX): YOLOv3-tiny 416 QDQ 1.34x vs QLinear 1.31x: alike;
# - deepsparse 1.8, VNNI: YOLOv3-SPP 512 QLinear 5.08x vs QDQ 2.91x: QLinear;
# - deepsparse 1.8, AVX2: the QDQ file "wins" (YOLOv3-SPP 512: 3.54x vs QLinear 1.69x), but DeepSparse
#   compiles none of it (fraction_of_supported_ops 0.0) and hands it to its bundled ONNX Runtime
#   (docs/experiments/spp_deepsparse.md); so DeepSparse keeps its own QLinear form, and the log says
#   that ONNX Runtime runs int8 faster on this CPU;
# - openvino 2026.4, AVX2: 60 s interleaved per file, YOLOv3-tiny 416 QDQ 5.29 vs QLinear 5.30 img/s,
#   YOLOv3-SPP 512 0.434 vs 0.444 img/s: alike (both forms compile to the same executed graph: on
#   YOLOv3-tiny 13 convolutions, 11 of them u8); VNNI: pruned YOLOv3-SPP 512 QDQ 3.52x vs QLinear 3.44x
#   (docs/results.md, "YOLOv3-SPP speed on this CPU"): alike.
PREFERRED_INT8_FORM: dict[tuple[str, str], FormRule] = {
    ("onnxruntime", "vnni"): FormRule(None, "ONNX Runtime runs QDQ and QLinear alike (YOLOv3-SPP 512: 2.86x vs 2.88x)"),
    ("onnxruntime", "avx2"): FormRule(
        None, "ONNX Runtime runs QDQ and QLinear alike (YOLOv3-tiny 416: 1.34x vs 1.31x)"
    ),
    ("deepsparse", "vnni"): FormRule(
        "qlinear", "with VNNI DeepSparse 1.8 runs QLinearConv fastest (YOLOv3-SPP 512: 5.08x vs QDQ 2.91x)"
    ),
    ("deepsparse", "avx2"): FormRule(
        "qlinear",
        "without VNNI DeepSparse 1.8 emulates int8: the QDQ file only runs in its bundled ONNX Runtime, so it "
        "gets QLinearConv (pruned YOLOv3-SPP 512: 1.43x vs ONNX Runtime's 1.75x on the same file; "
        "docs/experiments/spp_deepsparse.md)",
    ),
    ("openvino", "vnni"): FormRule(None, "OpenVINO runs QDQ and QLinear alike (YOLOv3-SPP 512: 3.52x vs 3.44x)"),
    ("openvino", "avx2"): FormRule(None, "OpenVINO runs QDQ and QLinear alike (YOLOv3-tiny 416: 5.29 vs 5.30 img/s)"),
    # not a speed rule: the reference engine computes exactly only what Quantize/DequantizeLinear spell out
    ("onnxruntime-reference", "vnni"): _REFERENCE_RULE,
    ("onnxruntime-reference", "avx2"): _REFERENCE_RULE,
}


# Engines that cannot run QLinearConv with per-channel weight scales, which the shipped QAT recipes and PTQ
# write (one scale per output channel, ONNX's axis 0 for QLinearConv's w_scale). Such a file goes to its QDQ
# sibling on these engines unless --exact-file names it (docs/results.md, "Which int8 file each engine gets"):
# - DeepSparse 1.8 on an AVX-512 VNNI Zen 4 fails an assertion in its pooling code
#   (``avx512_noninterleaved_layout.hpp:333``) on every such file we tried (YOLOv3-tiny, random and trained
#   weights), and compiles the same models quantized per tensor, and their QDQ files either way (stop 38);
#   AVX2 CPUs were not tried, so the rule holds where AVX-512F is present;
# - OpenVINO 2026.4.1's ONNX reader scales the weights along their input channels (axis 1) instead: it
#   refuses a conv with more outputs than inputs and computes wrong values for a square one (stop 39;
#   ``engines.openvino_per_channel_qlinear_ok`` checks the installed version). Not CPU-dependent.
PER_CHANNEL_QLINEAR: dict[str, FormRule] = {
    "deepsparse": FormRule(
        "qdq",
        "DeepSparse 1.8 fails to compile QLinearConv with per-channel weight scales on AVX-512 CPUs (stop 38), "
        "and this file has them",
    ),
    "openvino": FormRule(
        "qdq",
        "OpenVINO's ONNX reader applies QLinearConv's per-channel weight scales along the wrong axis (stop 39), "
        "and this file has them",
    ),
}
_PER_CHANNEL_NEEDS_AVX512 = {"deepsparse"}


def per_channel_qlinear_convs(path: str | Path) -> int:
    """How many ``QLinearConv`` nodes of ``path`` have one weight scale per output channel."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {t.name: t for t in graph.initializer}
    sizes = (
        numpy_helper.to_array(inits[n.input[4]]).size
        for n in graph.node
        if n.op_type == "QLinearConv" and n.input[4] in inits
    )
    return sum(size > 1 for size in sizes)


def cannot_run_per_channel_qlinear(engine: str, qlinear: Path, flags: dict[str, bool] | None = None) -> bool:
    """Whether ``qlinear`` has per-channel QLinearConv weights and ``engine`` is listed in
    :data:`PER_CHANNEL_QLINEAR` (for DeepSparse: on a CPU with AVX-512F)."""
    from sparseyolo.utils.system import isa_flags

    if engine not in PER_CHANNEL_QLINEAR or not qlinear.is_file():
        return False
    if engine in _PER_CHANNEL_NEEDS_AVX512 and not (isa_flags() if flags is None else flags).get("AVX-512F"):
        return False
    try:
        return per_channel_qlinear_convs(qlinear) > 0
    except Exception as e:  # an unreadable file is reported by the engine that loads it
        LOGGER.debug(f"{qlinear}: {e}")
        return False


def cpu_class(flags: dict[str, bool] | None = None) -> str:
    """``"vnni"`` when this CPU has int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI, AMX) or its
    flags cannot be read, else ``"avx2"``. ``flags``: ``utils.system.isa_flags()`` output, for tests."""
    from sparseyolo.utils.system import isa_flags

    f = isa_flags() if flags is None else flags
    if not f:
        return "vnni"
    return "vnni" if f.get("AVX-512 VNNI") or f.get("AVX-VNNI") or f.get("AMX-INT8") else "avx2"


def form_rule(engine: str, cpu: str | None = None) -> FormRule:
    """The table's rule for ``engine`` on ``cpu`` (default: this machine's :func:`cpu_class`)."""
    return PREFERRED_INT8_FORM.get((engine, cpu or cpu_class()), FormRule(None, f"no measurement for {engine}"))


def preferred_form(engine: str, cpu: str | None = None) -> str | None:
    """The int8 form ``engine`` runs fastest (``"qdq"`` / ``"qlinear"``) on ``cpu`` (default: this
    machine's class), or None: it runs both alike, so the file named is used."""
    return form_rule(engine, cpu).form


def model_form(info: ModelInfo) -> str:
    """``"qdq"``, ``"qlinear"`` or ``"float"``: the export's ``format`` metadata, else its ops."""
    fmt = info.metadata.get("format")
    if fmt in INT8_FORMS or fmt == "fp32":
        return str(fmt)
    ops = info.op_types
    if ops & {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}:
        return "qlinear"
    if ops & {"QuantizeLinear", "DequantizeLinear"}:
        return "qdq"
    return "float"


def int8_sibling(path: str | Path) -> Path:
    """The other int8 form's file name: ``W.onnx`` <-> ``W.qlinear.onnx``."""
    path = Path(path)
    if path.name.lower().endswith(QLINEAR_SUFFIX):
        return path.with_name(path.name[: -len(QLINEAR_SUFFIX)] + ".onnx")
    return path.with_name(path.stem + QLINEAR_SUFFIX)


def _label(path: Path, form: str) -> str:
    return f"{path.name} ({FORM_LABEL.get(form, form)})"


def pick_int8_file(
    path: str | Path, engine: str, exact: bool = False, info: ModelInfo | None = None
) -> tuple[Path, str | None]:
    """``(file to run, log line)`` for ``path`` on ``engine``.

    A float model gives ``(path, None)``. An int8 file gives its sibling form when ``engine`` prefers
    that form and the sibling exists (and is that form); otherwise the file itself. The line names
    the file that runs, its form and why (None only for float models).
    """
    path = Path(path)
    info = info or read_model_info(path)
    form = model_form(info)
    if form not in INT8_FORMS:
        return path, None
    rule = form_rule(engine)
    runs_qlinear = rule.form == "qlinear" or (rule.form is None and form == "qlinear")
    if runs_qlinear and not exact:
        if cannot_run_per_channel_qlinear(engine, path if form == "qlinear" else int8_sibling(path)):
            rule = PER_CHANNEL_QLINEAR[engine]
    if exact:
        return path, f"{engine}: running {_label(path, form)} as named (--exact-file)"
    if rule.form is None or rule.form == form:
        return path, f"{engine}: running {_label(path, form)} as named: {rule.why}"
    sibling = int8_sibling(path)
    if not sibling.is_file():
        return path, f"{engine}: running {_label(path, form)}: {rule.why}, but there is no {sibling.name}"
    try:
        other = model_form(read_model_info(sibling))
    except Exception as e:  # an unreadable sibling must not stop a run on the file that was named
        LOGGER.debug(f"{sibling}: {e}")
        other = "unreadable"
    if other != rule.form:
        return path, (
            f"{engine}: running {_label(path, form)}: {rule.why}, but {sibling.name} is "
            f"{FORM_LABEL.get(other, other)}, not {FORM_LABEL[rule.form]}"
        )
    return sibling, (
        f"{engine}: running {_label(sibling, other)} instead of {path.name}: {rule.why} "
        "(--exact-file runs the file named)"
    )

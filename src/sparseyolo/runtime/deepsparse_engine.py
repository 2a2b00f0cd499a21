"""The DeepSparse 1.8 engine: in this interpreter when ``import deepsparse`` works, else through a
JSON-lines worker in the separate ``.venv-deepsparse`` (DeepSparse needs Python <= 3.11, numpy < 2).
Registered as ``deepsparse`` in :data:`sparseyolo.runtime.engines.ENGINES`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path

from sparseyolo.runtime.deepsparse_worker import time_slice
from sparseyolo.runtime.engines import ENGINES, Engine, EngineUnavailable, Runner
from sparseyolo.utils.errors import SparseYoloError
from sparseyolo.utils.logging import LOGGER


class _DsRunner(Runner):
    """DeepSparse in this interpreter (when ``import deepsparse`` works here)."""

    def __init__(self, engine, shapes, dtypes, seed):
        super().__init__(shapes, dtypes, seed)
        self.engine = engine
        self.ordered = list(self.shapes)

    def run(self, inputs=None):
        feed = self._feed(inputs)
        return self.engine.run([feed[name] for name in self.ordered])

    def time_slice(self, seconds, min_iters=1):
        arrays = [self.inputs[name] for name in self.ordered]
        return time_slice(lambda: self.engine.run(arrays), seconds, min_iters)

    def close(self):
        self.engine = None


def deepsparse_python() -> Path | None:
    """The interpreter of the separate DeepSparse venv: ``$SPARSEYOLO_DEEPSPARSE_PYTHON``, else
    ``.venv-deepsparse`` in the working directory, else in the source checkout (editable installs)."""
    env = os.environ.get("SPARSEYOLO_DEEPSPARSE_PYTHON")
    if env:
        return Path(env) if Path(env).exists() else None
    for root in (Path.cwd(), Path(__file__).resolve().parents[3]):
        candidate = root / ".venv-deepsparse" / "bin" / "python"
        if candidate.exists():
            return candidate
    return None


DEEPSPARSE_MAX_IR = 9  # DeepSparse 1.8 embeds an ONNX Runtime that reads IR versions <= 9


def _deepsparse_copy(path: Path, shapes: Mapping[str, tuple[int, ...]], static: bool) -> Path | None:
    """A temporary copy of ``path`` that DeepSparse 1.8 can take as is, or None if the file already fits.

    - DeepSparse's own ``input_shapes`` override rewrites the user's ONNX file in place (seen with
      1.8.0), so dynamic axes are fixed here, in a private copy, instead;
    - ``ir_version`` is lowered to 9 when newer (recent onnx writes IR 10+ for graphs that use
      nothing newer), since DeepSparse's embedded ONNX Runtime rejects it.
    """
    import tempfile

    import onnx

    header = onnx.load(str(path), load_external_data=False)
    if static and header.ir_version <= DEEPSPARSE_MAX_IR:
        return None
    model = onnx.load(str(path))
    if header.ir_version > DEEPSPARSE_MAX_IR:
        LOGGER.info(f"{path.name}: ONNX IR version {header.ir_version} -> {DEEPSPARSE_MAX_IR} for DeepSparse 1.8")
        model.ir_version = DEEPSPARSE_MAX_IR
    for vi in model.graph.input:
        if vi.name in shapes:
            for d, size in zip(vi.type.tensor_type.shape.dim, shapes[vi.name], strict=False):
                d.ClearField("dim_param")
                d.dim_value = int(size)
    fd, tmp = tempfile.mkstemp(prefix=f"{path.stem}.deepsparse.", suffix=".onnx")
    os.close(fd)
    onnx.save(model, tmp)
    return Path(tmp)


def explain_compile_error(path: Path, message: str) -> str:
    """``message`` plus the known cause where the file shows it (``forms.PER_CHANNEL_QLINEAR``): the
    form picker already avoids such a file when its QDQ sibling exists, so this is the file named alone
    or with ``--exact-file``."""
    from sparseyolo.runtime.forms import per_channel_qlinear_convs

    try:
        per_channel = per_channel_qlinear_convs(path)
    except Exception:  # the file itself may be what failed to load; the message says so
        per_channel = 0
    if not per_channel:
        return message
    return (
        f"{message} ({per_channel} QLinearConv nodes have per-channel weight scales, which DeepSparse 1.8 failed "
        "to compile on AVX-512 CPUs in our tests: give it the QDQ file, or quantize with per_channel: false)"
    )


@functools.cache
def _worker_version(python: str) -> str:
    from sparseyolo.runtime.worker_client import WorkerClient

    try:
        with WorkerClient(python) as client:
            info = client.request({"cmd": "version"})
    except SparseYoloError as e:  # a broken venv counts as "not installed", with the reason
        raise ImportError(f"deepsparse worker {python} failed: {e}", name="deepsparse") from None
    return f"{info['deepsparse']} (worker: {python})"


@ENGINES.register("deepsparse")
class DeepSparseEngine(Engine):
    """Neural Magic DeepSparse 1.8 (``num_cores`` = ``threads``); in-process or in a worker subprocess."""

    name = "deepsparse"
    install_hint = (
        "run scripts/setup_deepsparse.sh (creates .venv-deepsparse with deepsparse==1.8.0) "
        "or set SPARSEYOLO_DEEPSPARSE_PYTHON"
    )

    def _in_process(self) -> bool:
        try:
            import deepsparse  # noqa: F401
        except ImportError:
            return False
        return True

    def _version(self) -> str:
        if self._in_process():
            import deepsparse

            return deepsparse.__version__
        python = deepsparse_python()
        if python is None:
            env = os.environ.get("SPARSEYOLO_DEEPSPARSE_PYTHON")
            where = (
                f"SPARSEYOLO_DEEPSPARSE_PYTHON={env} does not exist"
                if env
                else "no deepsparse in this interpreter and no ./.venv-deepsparse"
            )
            raise ImportError(where, name="deepsparse")
        return _worker_version(str(python))

    def _compile(self, path, batch_size, threads, shapes, dtypes, static, seed, dynamic=False, device="cpu"):
        tmp = _deepsparse_copy(Path(path), shapes, static)
        try:
            # the copy has static shapes: DeepSparse must not override (and rewrite) them itself
            runner = self._compile_file(tmp or path, batch_size, threads, shapes, dtypes, True, seed)
        except SparseYoloError as e:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            raise SparseYoloError(explain_compile_error(Path(path), str(e))) from None
        except BaseException:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            raise
        if tmp is not None:
            runner.cleanup_paths.append(tmp)
        return runner

    def _compile_file(self, path, batch_size, threads, shapes, dtypes, static, seed):
        if self._in_process():
            from sparseyolo.runtime.deepsparse_worker import compile_engine

            try:
                engine = compile_engine(str(path), batch_size, threads, shapes, not static)
            except Exception as e:
                raise SparseYoloError(f"{path}: deepsparse cannot compile the model: {e}") from None
            return _DsRunner(engine, shapes, dtypes, seed)
        python = deepsparse_python()
        if python is None:
            raise EngineUnavailable(f"deepsparse: not installed; {self.install_hint}")
        from sparseyolo.runtime.worker_client import RemoteRunner

        return RemoteRunner(python, path, batch_size, threads, shapes, dtypes, static, seed)

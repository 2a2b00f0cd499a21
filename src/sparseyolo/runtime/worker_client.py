"""Parent side of the DeepSparse worker protocol (see ``deepsparse_worker.py``)."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from sparseyolo.runtime.deepsparse_worker import decode_array, encode_array
from sparseyolo.runtime.engines import Runner
from sparseyolo.utils.errors import SparseYoloError

WORKER_SCRIPT = Path(__file__).with_name("deepsparse_worker.py")


class WorkerClient:
    """A worker subprocess running ``WORKER_SCRIPT`` under ``python``; one JSON request/reply at a time."""

    def __init__(self, python: str | Path, timeout: float | None = None):
        self.python = str(python)
        env = dict(os.environ, NM_DISABLE_ANALYTICS="1", ORT_DISABLE_TELEMETRY="1", PYTHONUNBUFFERED="1")
        env.pop("PYTHONPATH", None)  # the worker must not pick up this venv's numpy 2 / onnx
        self._stderr = tempfile.TemporaryFile(mode="w+")
        try:
            self.proc = subprocess.Popen(
                [self.python, "-s", str(WORKER_SCRIPT)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                text=True,
                env=env,
            )
        except OSError as e:
            raise SparseYoloError(f"cannot start the deepsparse worker {self.python}: {e}") from None

    def request(self, req: dict) -> dict:
        """Send one request and return the reply; a failed reply or a dead worker raises SparseYoloError."""
        if self.proc.poll() is not None:
            raise SparseYoloError(f"deepsparse worker exited (code {self.proc.returncode}): {self._tail()}")
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            self.proc.wait(timeout=10)
            raise SparseYoloError(f"deepsparse worker died (code {self.proc.returncode}): {self._tail()}")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise SparseYoloError(f"deepsparse worker: {reply.get('error')}")
        return reply

    def _tail(self, n: int = 2000) -> str:
        """The worker's last stderr output; when DeepSparse's native code failed an assertion, that line
        alone (its backtrace that follows is addresses and bytes)."""
        self._stderr.seek(0)
        text = self._stderr.read()
        assertion = [line.strip() for line in text.splitlines() if line.strip().startswith("Assertion at ")]
        return assertion[-1] if assertion else text[-n:].strip() or "(no output)"

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()

    def __enter__(self) -> WorkerClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RemoteRunner(Runner):
    """A DeepSparse model loaded in a worker; ``time_slice`` runs there so timing excludes IPC."""

    def __init__(self, python, path, batch_size, threads, shapes, dtypes, static=True, seed=0):
        super().__init__(shapes, dtypes, seed)
        self.client = WorkerClient(python)
        try:
            self.info = self.client.request(
                {
                    "cmd": "load",
                    "path": str(Path(path).resolve()),
                    "batch_size": int(batch_size),
                    "threads": int(threads) if threads else None,
                    "shapes": {k: list(v) for k, v in self.shapes.items()},
                    "dtypes": self.dtypes,
                    "override_shapes": not static,
                    "seed": seed,
                }
            )
        except SparseYoloError as e:
            self.client.close()
            raise SparseYoloError(f"{path}: deepsparse cannot compile the model: {e}") from None

    def run(self, inputs=None) -> list[np.ndarray]:
        """One inference in the worker (arrays travel base64-encoded; fine for checks, not for timing)."""
        req: dict = {"cmd": "run"}
        if inputs is not None:
            req["inputs"] = {name: encode_array(a) for name, a in self._feed(inputs).items()}
        return [decode_array(d) for d in self.client.request(req)["outputs"]]

    def time_slice(self, seconds: float, min_iters: int = 1) -> list[float]:
        return self.client.request({"cmd": "time", "seconds": seconds, "min_iters": min_iters})["latencies"]

    def close(self) -> None:
        self.client.close()

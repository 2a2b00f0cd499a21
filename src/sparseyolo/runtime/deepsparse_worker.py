"""DeepSparse benchmark worker: a stand-alone script that imports only deepsparse, numpy and stdlib.

DeepSparse 1.8 needs numpy<2 / onnx<1.15, so it usually lives in its own venv
(``scripts/setup_deepsparse.sh``). sparseyolo starts this file with that venv's interpreter
(``python deepsparse_worker.py``) and speaks JSON lines over stdin/stdout, one request per line:

    {"cmd": "load", "path": ..., "batch_size": 1, "threads": 2, "shapes": {name: [..]},
     "dtypes": {name: "float32"}, "override_shapes": false, "seed": 0}       -> {"ok": true, ...}
    {"cmd": "time", "seconds": 0.5, "min_iters": 1}                          -> {"ok": true, "latencies": [s, ...]}
    {"cmd": "run", "inputs": {name: ARRAY} (optional)}                       -> {"ok": true, "outputs": [ARRAY, ...]}
    {"cmd": "version"}                                                       -> {"ok": true, "deepsparse": "1.8.0", ...}
    {"cmd": "quit"}

where ARRAY = {"dtype": "float32", "shape": [..], "data": base64 of the C-order bytes}.
Each "time" request is one short slice of an interleaved benchmark: the parent alternates slices
between this worker and its other runners, so all of them see the same machine noise.
Errors come back as {"ok": false, "error": "..."}; library output is sent to stderr so that stdout
carries only the protocol.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
import traceback

os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")


def time_slice(fn, seconds: float, min_iters: int = 1) -> list[float]:
    """Call ``fn()`` repeatedly for about ``seconds`` (at least ``min_iters`` times); per-call latencies in s."""
    latencies = []
    clock = time.perf_counter
    start = clock()
    while True:
        t0 = clock()
        fn()
        t1 = clock()
        latencies.append(t1 - t0)
        if t1 - start >= seconds and len(latencies) >= min_iters:
            return latencies


def make_inputs(shapes: dict, dtypes: dict, seed: int = 0) -> list:
    """Random inputs in graph order, same recipe as sparseyolo.runtime.onnx_info.random_array."""
    import numpy as np

    rng = np.random.default_rng(seed)
    arrays = []
    for name, shape in shapes.items():
        dt = np.dtype(dtypes[name])
        shape = tuple(shape)
        if dt.kind == "f":
            arrays.append(rng.random(shape, dtype=np.float32).astype(dt))
        elif dt.kind == "b":
            arrays.append(rng.integers(0, 2, size=shape).astype(bool))
        else:
            info = np.iinfo(dt)
            arrays.append(rng.integers(max(info.min, 0), min(info.max, 255) + 1, size=shape).astype(dt))
    return arrays


def compile_engine(path: str, batch_size: int, threads: int | None, shapes: dict, override_shapes: bool):
    """A DeepSparse engine for ``path``; ``threads`` maps to ``num_cores`` (None = all cores)."""
    from deepsparse import compile_model

    kwargs = {"batch_size": int(batch_size)}
    if threads:
        kwargs["num_cores"] = int(threads)
    if override_shapes:
        kwargs["input_shapes"] = [list(s) for s in shapes.values()]
    return compile_model(path, **kwargs)


def encode_array(a) -> dict:
    import numpy as np

    a = np.ascontiguousarray(a)
    return {"dtype": a.dtype.str, "shape": list(a.shape), "data": base64.b64encode(a.tobytes()).decode("ascii")}


def decode_array(d: dict):
    import numpy as np

    return np.frombuffer(base64.b64decode(d["data"]), dtype=np.dtype(d["dtype"])).reshape(d["shape"]).copy()


def versions() -> dict:
    import deepsparse
    import numpy

    return {
        "deepsparse": getattr(deepsparse, "__version__", "?"),
        "numpy": numpy.__version__,
        "python": sys.version.split()[0],
    }


class _Worker:
    def __init__(self):
        self.engine = None
        self.inputs = None
        self.names: list = []

    def handle(self, req: dict) -> dict:
        cmd = req.get("cmd")
        if cmd == "version":
            return {"ok": True, **versions()}
        if cmd == "load":
            self.engine = compile_engine(
                req["path"], req["batch_size"], req.get("threads"), req["shapes"], bool(req.get("override_shapes"))
            )
            self.inputs = make_inputs(req["shapes"], req["dtypes"], int(req.get("seed", 0)))
            self.names = list(req["shapes"])
            return {"ok": True, **versions()}
        if self.engine is None:
            return {"ok": False, "error": f"command {cmd!r} before 'load'"}
        if cmd == "run":
            arrays = self.inputs
            if req.get("inputs"):
                arrays = [decode_array(req["inputs"][name]) for name in self.names]
            return {"ok": True, "outputs": [encode_array(o) for o in self.engine.run(arrays)]}
        if cmd == "time":
            lat = time_slice(lambda: self.engine.run(self.inputs), float(req["seconds"]), int(req.get("min_iters", 1)))
            return {"ok": True, "latencies": lat}
        return {"ok": False, "error": f"unknown command {cmd!r}"}


def main() -> int:
    # keep the protocol on a private copy of stdout; anything printed by libraries goes to stderr
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    worker = _Worker()
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            req = json.loads(line)
            if req.get("cmd") == "quit":
                break
            reply = worker.handle(req)
        except Exception as e:  # report every failure to the parent instead of dying silently
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        proto.write(json.dumps(reply) + "\n")
        proto.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Training throughput (images/s) and the overhead of the weight EMA and of the data loader.

Default: YOLOv3-tiny, 416 px, batch 16, on CPU, on coco128 train images with the full training
augmentation (mosaic etc.). Three variants run interleaved (A, B, C, A, B, C, ...) so that drift in
machine load hits them alike; each reports the median over repeats:

- ``core``:   forward + loss + backward + optimizer step on batches already in memory;
- ``+ema``:   ``core`` plus the EMA update (overhead ratio = +ema / core - 1);
- ``+loader``: ``core`` with batches pulled from the DataLoader (overhead = +loader / core - 1).

The headline rate is a full training step (loader + EMA): batch / (median(+loader) + EMA time).

    python bench/train_throughput.py --iters 20 --repeats 5          # the real measurement
    python bench/train_throughput.py --img 128 --iters 2 --repeats 2 # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("NM_DISABLE_ANALYTICS", "1")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--cfg", default="yolov3-tiny")
    p.add_argument(
        "--data-dir",
        default=str(REPO.parent / "shared/data/coco128/images/train2017"),
        help="folder of images with YOLO labels beside them (labels/ next to images/)",
    )
    p.add_argument("--img", type=int, default=416)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--iters", type=int, default=10, help="training steps per variant per repeat")
    p.add_argument("--repeats", type=int, default=5, help="interleaved repeats (medians are reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before measuring")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from sparseyolo.data.dataset import create_dataloader
    from sparseyolo.engine.ema import ModelEMA
    from sparseyolo.engine.hyp import load_hyp
    from sparseyolo.engine.loss import YoloLoss
    from sparseyolo.engine.optim import build_optimizer
    from sparseyolo.models import build_model

    device = torch.device("cuda", 0) if args.device != "cpu" and torch.cuda.is_available() else torch.device("cpu")
    hyp = load_hyp("scratch")
    model = build_model(args.cfg, nc=80).to(device).train()
    loss_fn = YoloLoss(model, hyp, args.img)
    opt = build_optimizer(model, "SGD", hyp["lr0"], hyp["momentum"], hyp["weight_decay"])
    ema = ModelEMA(model)
    loader, dataset = create_dataloader(
        args.data_dir,
        args.img,
        args.batch,
        int(model.stride.max()),
        hyp=hyp,
        augment=True,
        workers=args.workers,
        shuffle=True,
        seed=0,
    )

    def endless():
        while True:
            yield from loader

    stream = endless()
    cached = [next(stream) for _ in range(min(4, len(loader)))]  # in-memory batches for core / +ema

    def step(batch) -> None:
        imgs = batch[0].to(device).float() / 255
        loss, _ = loss_fn(model(imgs), batch[1].to(device))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sync() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def run(variant: str, n: int) -> float:
        t0 = sync()
        for i in range(n):
            step(next(stream) if variant == "+loader" else cached[i % len(cached)])
            if variant == "+ema":
                ema.update(model)
        return (sync() - t0) / n

    for v in ("core", "+ema", "+loader"):
        run(v, args.warmup)
    times: dict[str, list[float]] = {"core": [], "+ema": [], "+loader": []}
    for r in range(args.repeats):
        for v in times:
            times[v].append(run(v, args.iters))
        print(
            f"repeat {r + 1}/{args.repeats}: " + ", ".join(f"{v} {times[v][-1] * 1e3:.0f} ms/step" for v in times),
            file=sys.stderr,
        )
    med = {v: statistics.median(t) for v, t in times.items()}
    ema_s = med["+ema"] - med["core"]
    result = {
        "model": args.cfg,
        "img": args.img,
        "batch": args.batch,
        "device": str(device),
        "threads": args.threads,
        "workers": args.workers,
        "iters": args.iters,
        "repeats": args.repeats,
        "ms_per_step": {v: round(m * 1e3, 2) for v, m in med.items()},
        "train_images_per_s": round(args.batch / (med["+loader"] + max(ema_s, 0.0)), 2),
        "core_images_per_s": round(args.batch / med["core"], 2),
        "ema_overhead": round(med["+ema"] / med["core"] - 1, 4),
        "loader_overhead": round(med["+loader"] / med["core"] - 1, 4),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

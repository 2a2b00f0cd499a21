"""#16's BatchNorm row: re-estimate a checkpoint's BatchNorm statistics and save a copy to score.

The statistics are reset and re-estimated as a plain (cumulative) average over one pass of the
unaugmented BCCD training images (19 batches of 16, letterboxed square at 416), then written into the
copy's ``ema`` (what ``val`` loads). Usage, from the repository root:

    python docs/experiments/bn_reestimate.py runs/train/R/weights/best.pt /tmp/R-bn.pt
    sparseyolo val --weights /tmp/R-bn.pt --data datasets/bccd/data.yaml --img 416 --no-rect
"""

import sys

import torch
from torch import nn

from sparseyolo.data.dataset import create_dataloader
from sparseyolo.models.checkpoint import load_checkpoint, model_from_checkpoint


def main(src: str, dst: str, images: str = "datasets/bccd/images/trainval") -> None:
    ckpt = load_checkpoint(src)
    model = model_from_checkpoint(ckpt).float()
    loader, _ = create_dataloader(images, 416, 16, stride=32, augment=False, workers=2)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over every batch, not the last few
    model.train()
    with torch.no_grad():
        for batch in loader:
            model(batch[0].float() / 255)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum  # the copy trains on as the original would
    ckpt["ema"] = dict(model.state_dict())
    torch.save(ckpt, dst)


if __name__ == "__main__":
    main(*sys.argv[1:3])

"""Sample order and per-sample seeds that depend only on ``(seed, epoch, index)``.

A DataLoader's own shuffle and its workers' random streams depend on earlier epochs (persistent
workers keep their state), so a resumed run with fresh workers would see other batches. Here the
order of an epoch and each augmented sample's seed are pure functions of the run's seed, the epoch
and the sample index: exact ``--resume`` with any ``--workers``.
"""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch
from torch.utils.data import Sampler, distributed


@contextlib.contextmanager
def seeded(seed: int):
    """Seed ``random`` and ``np.random`` for one sample, restoring their state afterwards (the main
    process's streams stay untouched with ``workers=0``)."""
    py, npy = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)


def mix_seed(*values: int) -> int:
    """A 32-bit seed from non-negative ints (well mixed: neighbouring epochs / indices are unrelated)."""
    return int(np.random.SeedSequence([int(v) % 2**32 for v in values]).generate_state(1)[0])


class EpochSampler(Sampler):
    """Order of one epoch, and a seed per sample, as functions of ``(seed, epoch, index)`` only.

    Yields ``(index, sample_seed)`` (``seeds=True``, for augmenting datasets) or plain indices.
    ``set_epoch(e)`` selects the epoch; without it each new iteration moves on to the next epoch.
    A DataLoader's own shuffle draws from a generator that its workers' base seed also draws from,
    and persistent workers keep their random streams across epochs, so an epoch's batches there
    depend on the epochs before it: a run resumed with fresh workers would see other batches.
    """

    def __init__(
        self,
        n: int,
        shuffle: bool,
        seed: int = 0,
        seeds: bool = True,
        base: distributed.DistributedSampler | None = None,
    ):
        self.n, self.shuffle, self.seed, self.seeds, self.base = n, shuffle, seed, seeds, base
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.base) if self.base is not None else self.n

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1  # the next iteration is the next epoch unless set_epoch says otherwise
        if self.base is not None:
            self.base.set_epoch(epoch)
            order = list(self.base)
        elif self.shuffle:
            g = torch.Generator()
            g.manual_seed(mix_seed(self.seed, epoch, 0x5EED))
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        for i in order:
            yield (i, mix_seed(self.seed, epoch, i)) if self.seeds else i


def seed_worker(worker_id: int) -> None:
    """Give numpy and ``random`` in each worker the seed torch derived from the loader's generator."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)

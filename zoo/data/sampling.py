"""Data order and augmentation as a pure function of ``(seed, epoch, item)``, so a resumed run replays exactly.

:class:`SeededSampler` yields :class:`ItemKey` keys: the dataset index and a seed derived from
``(seed, epoch, index)``. The zoo's datasets accept such a key and draw all their randomness (crop centres,
flips, which masks of an image) from its seed; a plain ``int`` index falls back to torch's global generator.

One process or many, the same code: the sampler shards by rank itself when ``torch.distributed`` is initialised
(rank ``r`` of ``W`` takes positions ``r, r + W, ...`` of the epoch's order, padded by repeating its start so every
rank gets the same number of items, as :class:`~torch.utils.data.DistributedSampler` does). Because it *is* a
``DistributedSampler``, Lightning neither wraps nor replaces it, whatever ``trainer.use_distributed_sampler`` says;
recipes set ``use_distributed_sampler: false`` to make that explicit. Lightning calls :meth:`set_epoch` before
every epoch.

Multi-process evaluation therefore sees up to ``W - 1`` repeated items (Lightning's default does the same); run
``validate``/``test`` on one device for exact per-item metrics.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sized
from typing import NamedTuple

import torch.distributed as dist
from torch.utils.data import DistributedSampler

#: Per-item seeds are below this bound (MONAI's ``set_random_state`` and numpy take 32-bit seeds).
SEED_BOUND = 2**31 - 1


class ItemKey(NamedTuple):
    """What the sampler hands the dataset: the item's ``index`` and the ``seed`` of its random draws."""

    index: int
    seed: int


def derive_seed(*parts: int | str) -> int:
    """A seed in ``[0, SEED_BOUND)`` that depends on every part and on nothing else (no global state)."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") % SEED_BOUND


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of item ``index`` in ``epoch`` of a run seeded with ``seed``."""
    return derive_seed("item", seed, epoch, index)


def distributed_world() -> tuple[int, int]:
    """``(world_size, rank)`` of the initialised process group, or ``(1, 0)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class SeededSampler(DistributedSampler):
    """Shuffles from ``(seed, epoch)``, shards by rank, and yields :class:`ItemKey` with per-item seeds.

    Args:
        dataset: anything with ``len``; only its length is used.
        shuffle: a fresh order every epoch (training); ``False`` keeps index order (evaluation).
        seed: the run's data seed; order and item seeds derive from it.
        drop_last: drop the tail instead of padding when the length does not divide by the world size.
        num_replicas / rank: override the process group (default: read from ``torch.distributed`` when it is
            initialised, else one process).
    """

    def __init__(
        self,
        dataset: Sized,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        world, own_rank = distributed_world()
        super().__init__(
            dataset,  # type: ignore[arg-type]
            num_replicas=world if num_replicas is None else num_replicas,
            rank=own_rank if rank is None else rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )

    def __iter__(self) -> Iterator[ItemKey]:  # type: ignore[override]
        # DistributedSampler orders from seed + epoch, pads and takes this rank's share.
        for index in super().__iter__():
            yield ItemKey(int(index), item_seed(self.seed, self.epoch, int(index)))

"""How users are batched for training: length-grouped batches, trimmed padding, step counts, physical batches."""

from __future__ import annotations

import contextlib

import torch
from opacus.utils.batch_memory_manager import BatchMemoryManager


def length_grouped_batches(lengths: torch.Tensor, batch_size: int, *, seed: int, group: int = 64):
    """Shuffled batches of users with similar history lengths (plain training): each chunk of `group` batches
    is sorted by length before it is cut, so a batch can be trimmed to its longest user; batch order is shuffled."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(lengths), generator=generator)
    batches = []
    for start in range(0, len(order), batch_size * group):
        chunk = order[start:start + batch_size * group]
        chunk = chunk[torch.argsort(lengths[chunk], stable=True)]
        batches.extend(chunk[i:i + batch_size].tolist() for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


class EpochBatches:
    """A batch sampler that draws new length-grouped batches every epoch."""

    def __init__(self, lengths: torch.Tensor, batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed, self.epoch = lengths, batch_size, seed, 0

    def __iter__(self):
        self.epoch += 1
        return iter(length_grouped_batches(self.lengths, self.batch_size, seed=self.seed * 100_003 + self.epoch))

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)


def trim_padding(batch: list[torch.Tensor], targets: torch.Tensor) -> list[torch.Tensor]:
    """Cut the right padding the whole batch shares: (B, L) tensors -> (B, T), T = the most targets any user has
    (`targets` (B, L), 0 = none). With right padding and causal attention, the kept positions do not change."""
    if targets.shape[0] == 0:
        return batch
    T = max(1, int((targets > 0).sum(1).max()))
    return [t[:, :T] if t.dim() == 2 else t for t in batch]


def steps_for(epochs: float, batches_per_epoch: int) -> int:
    """Whole epochs take every batch; a fraction rounds down (at least one step), so rounds of half an epoch never
    take more steps than the privacy plan for the same number of epochs allowed."""
    return max(1, int(epochs * batches_per_epoch))


@contextlib.contextmanager
def physical_batches(loader, optimizer, *, physical_batch_size: int | None, batch_size: int, private: bool):
    """Under DP, split each sampled (logical) batch into physical ones; accounting stays per logical batch."""
    if not private or not physical_batch_size or physical_batch_size >= batch_size:
        yield loader
        return
    with BatchMemoryManager(data_loader=loader, max_physical_batch_size=physical_batch_size,
                            optimizer=optimizer) as physical:
        yield physical

"""How users are batched for training: length-grouped batches, trimmed padding, step counts, physical batches."""

from __future__ import annotations

import torch

# What one more physical batch costs under DP-SGD, in padded positions (hooks, a second backward, accumulating
# the gradients): on Beauty's Poisson batches 300 split best of 150-1,500 (CPU-2, docs/benchmarks.md 3)
CHUNK_COST_POSITIONS = 300


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


def length_chunks(lengths: list[int], *, max_users: int | None = None,
                  chunk_cost: float = CHUNK_COST_POSITIONS) -> list[tuple[int, int]]:
    """Cut users sorted by length (ascending) into consecutive chunks [a, b) that minimise padded positions
    (each chunk padded to its longest user) plus `chunk_cost` per chunk; then any chunk over `max_users` is
    cut into equal parts. Cuts fall only where the length changes, so this is quick for any batch size."""
    n = len(lengths)
    if n == 0:
        return []
    cuts = [0] + [i for i in range(1, n) if lengths[i] != lengths[i - 1]] + [n]
    best, previous = [0.0] + [float("inf")] * (len(cuts) - 1), [0] * len(cuts)
    for j in range(1, len(cuts)):
        for i in range(j):
            cost = best[i] + (cuts[j] - cuts[i]) * lengths[cuts[j] - 1] + chunk_cost
            if cost < best[j]:
                best[j], previous[j] = cost, i
    chunks, j = [], len(cuts) - 1
    while j > 0:
        chunks.append((cuts[previous[j]], cuts[j]))
        j = previous[j]
    out = []
    for start, end in reversed(chunks):
        parts = -(-(end - start) // max_users) if max_users else 1
        bounds = [start + (end - start) * k // parts for k in range(parts + 1)]
        out.extend(zip(bounds[:-1], bounds[1:]))
    return out


def _private_chunks(loader, optimizer, *, max_users: int | None):
    """Each Poisson-sampled (logical) batch as physical batches of users of similar length; the optimizer skips
    its step until the last one, so clipping is per customer and noise and accounting per logical batch."""
    for batch in loader:
        targets = batch[-3]  # (B, L): 0 = no target at that position
        if targets.shape[0] == 0:  # an empty sample still takes its (noise-only) step
            optimizer.signal_skip_step(do_skip=False)
            yield batch
            continue
        lengths = (targets > 0).sum(1).clamp(min=1)
        order = torch.argsort(lengths, stable=True)
        chunks = length_chunks(lengths[order].tolist(), max_users=max_users)
        for i, (start, end) in enumerate(chunks):
            optimizer.signal_skip_step(do_skip=i < len(chunks) - 1)
            yield [t[order[start:end]] for t in batch]


def physical_batches(loader, optimizer, *, physical_batch_size: int | None, private: bool):
    """Under DP, split each sampled (logical) batch into physical ones by length (at most `physical_batch_size`
    users each, to bound memory); accounting stays per logical batch. Plain batches pass as they are."""
    return _private_chunks(loader, optimizer, max_users=physical_batch_size) if private else loader

"""When training scores the whole catalogue instead of sampled negatives: a bound on what a customer costs an epoch."""

from __future__ import annotations

# 16 million logits at the 128 customers a batch it was measured with (docs/benchmarks.md 1); per customer, because an
# epoch's cost does not depend on the batch size. Torch-free: the CLI reads it before it imports torch.
FULL_SOFTMAX_PER_CUSTOMER = 125_000


def whole_catalogue_fits(*, num_items: int, positions_per_customer: float,
                         bound: int = FULL_SOFTMAX_PER_CUSTOMER) -> bool:
    """Whether a customer's logits over the whole catalogue, scored positions (the training set's mean) x items,
    stay within `bound` (0: never)."""
    return 0 < positions_per_customer * num_items <= bound

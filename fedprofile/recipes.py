"""`fedprofile train`'s defaults: the measured recipe for plain training and the one for DP-SGD."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from shared_model.negatives import FULL_SOFTMAX_PER_CUSTOMER, whole_catalogue_fits


@dataclass(frozen=True)
class Recipe:
    epochs: int  # at most: plain training stops earlier once validation has not improved `patience` times
    batch_size: int
    layers: int
    heads: int
    dropout: float
    negatives: int
    ema_epochs: float  # the weight average's horizon in epochs (0: none): its decay per step follows the data's size
    eval_every: int
    patience: int | None
    profile_mlp: bool  # an MLP between the encoder and the scores (False: the normalised states are the profiles)
    loss_average: str  # "users" (each customer's positions averaged: what DP-SGD clips) or "positions" (SASRec's)
    tie_item_tables: bool  # one item encoder for inputs and outputs (Opacus' ghost clipping refuses it under DP)
    # the whole catalogue is the negatives while a customer's scored positions x the items stay within this many
    # logits an epoch: what an epoch costs, whatever the batch size
    full_softmax_per_customer: int
    lr_schedule: str = "constant"  # "cosine" over `epochs`, or "plateau": halved when validation stalls (plain only)

    def full_softmax(self, *, num_items: int, positions_per_customer: float) -> bool:
        """Whether training scores the whole catalogue rather than `negatives` sampled items: while a customer's
        logits, scored positions per customer (the training set's mean) x items, stay within the bound."""
        return whole_catalogue_fits(num_items=num_items, positions_per_customer=positions_per_customer,
                                    bound=self.full_softmax_per_customer)

    def ema_decay(self, steps_per_epoch: int) -> float:
        """The weight average's decay per optimizer step that spans `ema_epochs` epochs of this many steps."""
        return 1.0 - 1.0 / (self.ema_epochs * max(1, steps_per_epoch)) if self.ema_epochs > 0 else 0.0

    def with_choices(self, **chosen) -> "Recipe":
        """This recipe with the options a user gave (None: not given) in place of its own."""
        unknown = set(chosen) - {f.name for f in fields(self)}
        if unknown:
            raise TypeError(f"not recipe fields: {sorted(unknown)}")
        return replace(self, **{name: value for name, value in chosen.items() if value is not None})


# Amazon Beauty, validation-selected (docs/benchmarks.md 1): one block of one head, dropout 0.3, 1,024 uniform
# negatives, an average of the weights that validation scores and training keeps, validation every 2 epochs and a
# stop after 10 without a better NDCG@10. The average was tuned as a decay of 0.999 a step on Beauty's 175 steps
# an epoch: 5.7 epochs. Kept per step, it spans 125 epochs of MovieLens-100k's 8 steps and held the model back
# there (docs/benchmarks.md 1e), so the horizon is kept in epochs. Scored as SASRec scores: the encoder's
# normalised states are the profiles (no MLP between), every position weighs alike in the loss, and one item
# encoder serves inputs and outputs; on Beauty these three took the model from 0.0434 to 0.0580 (each lever
# measured in docs/benchmarks.md 1). Every catalogue item is a negative while a customer's logits (scored positions
# x items) stay within 125,000 (16 million at the 128 customers a batch it was measured with): Beauty's 5.7
# positions x 12,101 items = 69,000 (0.0600 at 128, 1.035 of 1,024 sampled negatives, paired; it learns faster and
# peaks sooner), MovieLens-100k's 69,000 (test 1.06, validation 0.97 of sampled: 1e). Past it the whole catalogue
# costs more than it was seen to return: on MovieLens latest-small (407,000) an epoch took 9x the sampled one's, and
# the Taobao extracts would score 2.6 million; they draw 1,024 uniform negatives. Per customer, not per batch: an
# epoch's cost does not depend on the batch size, and halving the batch does not switch latest-small over.
# Batches of 32 customers (2026-12-04, later; 128 before, then 64): each halving peaked at least as high on
# validation on both Beauty seeds and on MovieLens-100k (64 against 128: 0.0776 / 0.0773, 0.0779 / 0.0777, 0.1210 /
# 0.1193; 32 against 64: 0.07760 / 0.07758, 0.0786 / 0.0779, 0.1230 / 0.1210); Beauty test at 32: 0.0623 and 0.0630.
PLAIN = Recipe(epochs=200, batch_size=32, layers=1, heads=1, dropout=0.3, negatives=1024, ema_epochs=5.7,
               eval_every=2, patience=10, profile_mlp=False, loss_average="positions",
               tie_item_tables=True, full_softmax_per_customer=FULL_SOFTMAX_PER_CUSTOMER)
# DP-SGD (docs/benchmarks.md 2 and 3), the model as measured there: the MLP and separate item tables kept (ghost
# clipping refuses a table used on both sides; without the MLP it is not measured under DP), the loss per customer
# (what per-customer clipping bounds). The epochs set the noise (the budget is spread over
# them), so they are planned, not stopped early; 512 customers a step carry less noise each than 128 (test NDCG@10
# 1.21x on Beauty at epsilon 8) and run 2.2x faster. Validation picks nothing under DP (the last weights are
# reported), so no patience and no average.
PRIVATE = Recipe(epochs=20, batch_size=512, layers=1, heads=1, dropout=0.2, negatives=1024, ema_epochs=0.0,
                 eval_every=1, patience=None, profile_mlp=True, loss_average="users",
                 tie_item_tables=False, full_softmax_per_customer=0)

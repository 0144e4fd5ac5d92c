"""`fedprofile train`'s defaults: the measured recipe for plain training and the one for DP-SGD."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace


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
    full_softmax_logits: int  # the whole catalogue is the negatives while a batch scores at most this many logits
    lr_schedule: str = "constant"  # "cosine" over `epochs`, or "plateau": halved when validation stalls (plain only)

    def full_softmax(self, *, num_items: int, positions_per_customer: float) -> bool:
        """Whether training scores the whole catalogue rather than `negatives` sampled items: while a batch's logits,
        batch size x scored positions per customer (the training set's mean) x items, stay within the bound."""
        return 0 < self.batch_size * positions_per_customer * num_items <= self.full_softmax_logits

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
# measured in docs/benchmarks.md 1). Every catalogue item is a negative while a batch's logits stay within 16 million
# (64 MB): Beauty's 128 customers x 5.7 positions x 12,101 items = 8.9 M, 4.4 M at 64 (0.0600 at 128, 1.035 of 1,024
# sampled negatives, paired; it learns faster and peaks sooner), MovieLens-100k's 8.8 M (test 1.06, validation 0.97
# of sampled: 1e). Past it the whole catalogue costs more than it was seen to return: on MovieLens latest-small (52 M)
# an epoch took 9x the sampled one's, and the Taobao extracts would score 327 M; they draw 1,024 uniform negatives.
# Batches of 64 customers, not 128 (2026-12-04): twice the steps an epoch peak at least as high on validation on both
# Beauty seeds (0.0776 / 0.0773, 0.0779 / 0.0777) and on MovieLens-100k (0.1210 / 0.1193); Beauty test 1.030
# (1.007-1.054) of 128 on seed 0.
PLAIN = Recipe(epochs=200, batch_size=64, layers=1, heads=1, dropout=0.3, negatives=1024, ema_epochs=5.7,
               eval_every=2, patience=10, profile_mlp=False, loss_average="positions",
               tie_item_tables=True, full_softmax_logits=16_000_000)
# DP-SGD (docs/benchmarks.md 2 and 3), the model as measured there: the MLP and separate item tables kept (ghost
# clipping refuses a table used on both sides; without the MLP it is not measured under DP), the loss per customer
# (what per-customer clipping bounds). The epochs set the noise (the budget is spread over
# them), so they are planned, not stopped early; 512 customers a step carry less noise each than 128 (test NDCG@10
# 1.21x on Beauty at epsilon 8) and run 2.2x faster. Validation picks nothing under DP (the last weights are
# reported), so no patience and no average.
PRIVATE = Recipe(epochs=20, batch_size=512, layers=1, heads=1, dropout=0.2, negatives=1024, ema_epochs=0.0,
                 eval_every=1, patience=None, profile_mlp=True, loss_average="users",
                 tie_item_tables=False, full_softmax_logits=0)

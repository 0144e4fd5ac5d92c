"""The profile Transformer: a causal encoder over a user's events, a profile decoder and its heads."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from shared_model.data.schema import Behavior
from shared_model.features import NUM_AGE_BANDS, NUM_GENDERS, HashSpec

# Parameters whose names start with these prefixes stay on the merchant and are never aggregated:
# the residual tables are indexed by the merchant's own item ids, which mean nothing elsewhere.
LOCAL_PARAMETER_PREFIXES = ("input_items.local.", "output_items.local.")


@dataclass(frozen=True)
class ProfileConfig:
    max_len: int = 50  # events per user sequence
    d_model: int = 64  # encoder width
    n_heads: int = 2
    n_layers: int = 2
    profile_dim: int = 64  # k: size of the profile vector and of item representations
    dropout: float = 0.2
    item_buckets: int = 1 << 15  # rows in each of the two item hash tables
    category_buckets: int = 1 << 12
    brand_buckets: int = 1 << 13
    price_buckets: int = 32
    gap_buckets: int = 16
    token_buckets: int = 1 << 14  # hashed title words
    local_items: int = 0  # rows of the merchant-local residual table (0 = off; else num_items + 1)
    tie_item_tables: bool = False  # one item encoder for inputs and outputs (plain training only)
    frozen_item_ids: bool = False  # keep the hashed item-id tables at their random start (fewer noised weights under DP)
    fixed_item_vectors: bool = False  # item and category vectors = trained mixes of fixed random catalogue features
    recency_positions: bool = False  # position ids count back from the newest event (as left-padded SASRec)
    frequency_mix: float = 0.0  # BSARec's alpha: each block's share of a low-pass filter beside attention (plain only)
    frequency_cutoff: int = 5  # BSARec's c: the filter keeps c // 2 + 1 lowest frequencies of a max_len window
    # False: an item is its two id hashes only, as ID-only baselines (SASRec, BSARec) see it; category, brand, price
    # and title words stay out of item vectors (the interest head still learns categories from the events)
    item_metadata: bool = True
    time_features: bool = True  # False: no hour, weekday or time-gap embeddings (an event is item, behaviour, position)
    profile_mlp: bool = True  # False: profiles are the encoder's normalised states, scored directly (as SASRec)

    @property
    def hash_spec(self) -> HashSpec:
        return HashSpec(self.item_buckets, self.category_buckets, self.brand_buckets, self.price_buckets,
                        self.gap_buckets, self.token_buckets)

    def to_dict(self) -> dict:
        return asdict(self)


def is_shared(name: str) -> bool:
    """The one rule deciding which parameters leave a merchant for aggregation."""
    return not name.startswith(LOCAL_PARAMETER_PREFIXES)


def title_mean(table: nn.Embedding, descriptors: torch.Tensor) -> torch.Tensor:
    """The mean of an item's hashed title-word vectors: descriptors (..., 5 + W), 0 = no word -> (..., dim)."""
    words = descriptors[..., 5:]  # (..., W)
    present = (words > 0).unsqueeze(-1).to(table.weight.dtype)  # (..., W, 1)
    return (table(words) * present).sum(-2) / present.sum(-2).clamp(min=1.0)


class HashedItemEncoder(nn.Module):
    """An item vector from public descriptors only: two hashed id tables, category, brand, price bucket,
    the mean of hashed title words, plus an optional merchant-local residual; no global item vocabulary."""

    def __init__(self, config: ProfileConfig, dim: int):
        super().__init__()
        self.hash_a = nn.Embedding(config.item_buckets, dim)
        self.hash_b = nn.Embedding(config.item_buckets, dim)
        self.category = nn.Embedding(config.category_buckets, dim)
        self.brand = nn.Embedding(config.brand_buckets, dim)
        self.price = nn.Embedding(config.price_buckets, dim)
        self.title = nn.Embedding(config.token_buckets, dim)
        self.local = nn.Embedding(config.local_items, dim) if config.local_items else None
        for table in self.tables():
            nn.init.normal_(table.weight, std=0.02)
        if self.local is not None:
            nn.init.zeros_(self.local.weight)
        if config.frozen_item_ids:
            # Random, fixed id vectors still tell items apart; only the public descriptors' tables learn.
            # Under DP-SGD every trained row gets noise, and most id rows see too few users to outweigh it.
            self.hash_a.weight.requires_grad_(False)
            self.hash_b.weight.requires_grad_(False)

    def tables(self) -> list[nn.Embedding]:
        tables = (self.hash_a, self.hash_b, self.category, self.brand, self.price, self.title, self.local)
        return [t for t in tables if t is not None]

    def forward(self, descriptors: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        # descriptors: (..., 5 + W) from Catalogue.descriptors[items]; items: (...) local indices
        out = (
            self.hash_a(descriptors[..., 0])
            + self.hash_b(descriptors[..., 1])
            + self.category(descriptors[..., 2])
            + self.brand(descriptors[..., 3])
            + self.price(descriptors[..., 4])
            + title_mean(self.title, descriptors)
        )
        if self.local is not None:
            out = out + self.local(items)
        return out  # (..., dim)


class CatalogueFeatures(nn.Module):
    """Fixed random vectors of an item's public descriptors (two id hashes, category, brand, price bucket, title
    words), side by side rather than summed, so a trained layer on top can weigh each kind of similarity."""

    def __init__(self, config: ProfileConfig, dim: int):
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(n, dim) for n in (
            config.item_buckets, config.item_buckets, config.category_buckets, config.brand_buckets,
            config.price_buckets, config.token_buckets))
        for table in self.tables:
            nn.init.normal_(table.weight, std=dim ** -0.5)
            table.weight.requires_grad_(False)  # never trained: under DP nothing per item is left to noise
        self.width = 6 * dim

    def forward(self, descriptors: torch.Tensor) -> torch.Tensor:
        # descriptors: (..., 5 + W)
        parts = [table(descriptors[..., i]) for i, table in enumerate(self.tables[:5])]
        return torch.cat([*parts, title_mean(self.tables[5], descriptors)], dim=-1)  # (..., 6 dim)

    def category(self, categories: torch.Tensor) -> torch.Tensor:
        """The fixed vector of each category bucket: (...) -> (..., dim)."""
        return self.tables[2](categories)


class FixedFeatureItemEncoder(nn.Module):
    """An item vector as a trained linear mix of the fixed catalogue features: the only trained item weights
    are one (6 dim, dim) matrix, whatever the catalogue's size."""

    def __init__(self, features: CatalogueFeatures, dim: int):
        super().__init__()
        self.features = features  # shared by the input and output encoders, fixed
        self.mix = nn.Linear(features.width, dim, bias=False)

    def forward(self, descriptors: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.mix(self.features(descriptors))  # (..., dim)


class FixedFeatureCategoryEncoder(nn.Module):
    """A category vector as a trained linear map of the fixed category feature: (dim, k) weights instead of a
    trained row per category bucket."""

    def __init__(self, features: CatalogueFeatures, dim: int, out_dim: int):
        super().__init__()
        self.features = features  # fixed, shared with the item encoders
        self.mix = nn.Linear(dim, out_dim, bias=False)

    def forward(self, categories: torch.Tensor) -> torch.Tensor:
        return self.mix(self.features.category(categories))  # (..., k)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention from nn.Linear and SDPA; each position sees itself and earlier events."""

    def __init__(self, config: ProfileConfig):
        super().__init__()
        assert config.d_model % config.n_heads == 0, "d_model must be divisible by n_heads"
        self.n_heads = config.n_heads
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # each (B, T, d)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))  # (B, h, T, d/h)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, d)
        return self.proj(y)


class LowPassFilter(nn.Module):
    """BSARec's frequency-domain mixing, kept causal: at each position, the low-pass part of the max_len events
    ending there (what a left-padded BSARec computes for its newest event), plus the rest (the high-pass part)
    rescaled by a learned beta^2 per channel. One fixed lower-triangular (T, T) matrix: a causal convolution."""

    def __init__(self, config: ProfileConfig):
        super().__init__()
        n = config.max_len
        keep = torch.zeros(n // 2 + 1, 1)
        keep[: config.frequency_cutoff // 2 + 1] = 1.0
        eye = torch.eye(n, dtype=torch.float64)
        projection = torch.fft.irfft(keep * torch.fft.rfft(eye, dim=0, norm="ortho"), n=n, dim=0, norm="ortho")  # (n, n)
        kernel = projection[-1].flip(0).float()  # (n,): the weight of the event d steps back
        lags = torch.arange(n).view(-1, 1) - torch.arange(n).view(1, -1)  # (n, n): t - s
        self.register_buffer("mixing", torch.where(lags >= 0, kernel[lags.clamp(min=0)], 0.0), persistent=False)
        self.sqrt_beta = nn.Parameter(torch.randn(1, 1, config.d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[1]
        low = self.mixing[:T, :T] @ x  # (B, T, d)
        return low + self.sqrt_beta ** 2 * (x - low)


class FeedForward(nn.Module):
    def __init__(self, config: ProfileConfig):
        super().__init__()
        self.up = nn.Linear(config.d_model, 4 * config.d_model)
        self.down = nn.Linear(4 * config.d_model, config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(F.gelu(self.up(x))))


class Block(nn.Module):
    """Pre-norm Transformer block."""

    def __init__(self, config: ProfileConfig):
        super().__init__()
        self.norm_attn = nn.LayerNorm(config.d_model)
        self.attn = CausalSelfAttention(config)
        self.norm_ff = nn.LayerNorm(config.d_model)
        self.ff = FeedForward(config)
        self.dropout = nn.Dropout(config.dropout)
        self.mix = config.frequency_mix
        self.filter = LowPassFilter(config) if config.frequency_mix > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm_attn(x)  # (B, T, d)
        mixed = self.attn(h)
        if self.filter is not None:  # BSARec: alpha x filter + (1 - alpha) x attention
            mixed = self.mix * self.filter(h) + (1 - self.mix) * mixed
        x = x + self.dropout(mixed)
        return x + self.ff(self.norm_ff(x))


class EventEmbedding(nn.Module):
    """Sum of item, behaviour, time, position and user-attribute embeddings for each event."""

    def __init__(self, config: ProfileConfig):
        super().__init__()
        d = config.d_model
        self.behavior = nn.Embedding(len(Behavior) + 1, d)
        # without time features the tables are not built at all: DP's ghost clipping refuses unused parameters
        self.hour = nn.Embedding(25, d) if config.time_features else None
        self.weekday = nn.Embedding(8, d) if config.time_features else None
        self.gap = nn.Embedding(config.gap_buckets, d) if config.time_features else None
        self.position = nn.Embedding(config.max_len, d)
        self.gender = nn.Embedding(NUM_GENDERS, d)
        self.age = nn.Embedding(NUM_AGE_BANDS, d)
        self.recency_positions = config.recency_positions
        for table in (self.behavior, self.hour, self.weekday, self.gap, self.position, self.gender, self.age):
            if table is not None:
                nn.init.normal_(table.weight, std=0.02)

    def forward(self, item_vectors, items, behaviors, hours, weekdays, gaps, genders, ages) -> torch.Tensor:
        B, T = behaviors.shape
        # Opacus needs position ids materialised per example, not a broadcast view
        positions = torch.arange(T, device=behaviors.device).expand(B, T).contiguous()  # (B, T)
        if self.recency_positions:
            # Sequences are right-padded (item 0): count back from each user's newest event, so the position
            # that predicts the next item has the same id in training, validation and test.
            newest = (items > 0).sum(dim=1, keepdim=True) - 1  # (B, 1)
            positions = (newest - positions).clamp(min=0)  # (B, T)
        user = (self.gender(genders) + self.age(ages)).unsqueeze(1)  # (B, 1, d)
        x = item_vectors + self.behavior(behaviors)  # (B, T, d)
        if self.hour is not None:  # summed in this order so the default's figures stay bit for bit
            x = x + self.hour(hours) + self.weekday(weekdays) + self.gap(gaps)
        return x + self.position(positions) + user  # (B, T, d)


class ProfileTransformer(nn.Module):
    """Events -> per-position profile vectors (B, T, k), scored against item representations (C, k)."""

    def __init__(self, config: ProfileConfig, descriptors: torch.Tensor):
        super().__init__()
        if not 0 <= config.frequency_mix <= 1 or config.frequency_cutoff < 1:
            raise ValueError(f"frequency_mix must be in [0, 1] and frequency_cutoff at least 1, got "
                             f"{config.frequency_mix} and {config.frequency_cutoff}")
        self.config = config
        if config.fixed_item_vectors:
            if config.local_items or config.tie_item_tables:
                raise ValueError("fixed_item_vectors has its own item encoders: build it without local_items "
                                 "and tie_item_tables")
            features = CatalogueFeatures(config, config.d_model)
            self.input_items = FixedFeatureItemEncoder(features, config.d_model)
        else:
            self.input_items = HashedItemEncoder(config, config.d_model)
        self.embed = EventEmbedding(config)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = nn.LayerNorm(config.d_model)
        if config.profile_mlp:
            self.decoder = nn.Sequential(  # the profile "decoder": encoder state -> profile vector
                nn.Linear(config.d_model, config.d_model), nn.GELU(), nn.Linear(config.d_model, config.profile_dim)
            )
        elif config.d_model != config.profile_dim:
            raise ValueError(f"without the profile MLP the encoder's states are the profiles: d_model "
                             f"({config.d_model}) must equal profile_dim ({config.profile_dim})")
        else:
            self.decoder = nn.Identity()
        # Untied by default: ghost clipping (DP) refuses one trained embedding used on both sides.
        if config.fixed_item_vectors:
            self.output_items = FixedFeatureItemEncoder(self.input_items.features, config.profile_dim)
        elif config.tie_item_tables:
            if config.d_model != config.profile_dim:
                raise ValueError("tie_item_tables needs d_model == profile_dim")
            self.output_items = self.input_items
        else:
            self.output_items = HashedItemEncoder(config, config.profile_dim)
        # Category interests score the merchant's own categories (hashed), not a fixed global list.
        if config.fixed_item_vectors:
            self.category_vectors = FixedFeatureCategoryEncoder(self.input_items.features, config.d_model,
                                                                config.profile_dim)
        else:
            self.category_vectors = nn.Embedding(config.category_buckets, config.profile_dim)
            nn.init.normal_(self.category_vectors.weight, std=0.02)
        self.purchase_head = nn.Linear(config.profile_dim, 1)
        # The merchant's catalogue descriptors: data, not parameters, and never sent anywhere.
        self.register_buffer("descriptors", self._described(descriptors), persistent=False)

    def set_catalogue(self, descriptors: torch.Tensor) -> None:
        """Swap in another merchant's catalogue (the local residual table must match its size)."""
        if self.config.local_items and descriptors.shape[0] != self.config.local_items:
            raise ValueError(
                f"catalogue has {descriptors.shape[0]} rows but the local residual table has "
                f"{self.config.local_items}; rebuild the model with local_items={descriptors.shape[0]}"
            )
        self.descriptors = self._described(descriptors).to(self.descriptors.device)

    def _described(self, descriptors: torch.Tensor) -> torch.Tensor:
        """The descriptors the item tables see: (C, 5 + W); without item metadata, columns 2.. are 0 (category,
        brand and price rows 0 are one constant offset, a title of word 0 is no title)."""
        descriptors = descriptors.long()
        if self.config.item_metadata:
            return descriptors
        ids_only = descriptors.clone()
        ids_only[:, 2:] = 0
        return ids_only

    def encode(self, items, behaviors, hours, weekdays, gaps, genders, ages) -> torch.Tensor:
        """Per-position profile vectors (B, T, k); inputs (B, T) / (B,) already on the model's device."""
        x = self.embed(self.input_items(self.descriptors[items], items), items, behaviors, hours, weekdays, gaps, genders, ages)
        x = self.dropout(x)  # (B, T, d)
        for block in self.blocks:
            x = block(x)
        return self.decoder(self.norm(x))  # (B, T, k)

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """Output-side item representations for any shape of local item indices: (...) -> (..., k)."""
        return self.output_items(self.descriptors[items], items)

    def forward(self, items, behaviors, hours, weekdays, gaps, genders, ages, positives, negatives,
                target_categories, categories, train_negatives: bool = True):
        """Training forward. Inputs (B, T) / (B,); `positives` and `target_categories` (B, T) are the next
        items and their category buckets; `negatives` (N,) are items and `categories` (C,) the merchant's
        category buckets that every position is contrasted with.

        Returns profiles, positive item vectors, target-category vectors (each (B, T, k)), negative item
        vectors (N, k), category vectors (C, k) and purchase logits (B, T). With `train_negatives=False`
        (DP-SGD) the shared negative and category vectors are constants of the step: each user's gradient
        then flows only through its own events and targets, which is what per-user clipping needs, and the
        tables are not called twice with gradients (ghost clipping refuses that)."""
        profiles = self.encode(items, behaviors, hours, weekdays, gaps, genders, ages)
        with torch.set_grad_enabled(train_negatives and torch.is_grad_enabled()):
            negative_vectors = self.item_vectors(negatives)  # (N, k)
            category_vectors = self.category_vectors(categories)  # (C, k)
        return (
            profiles,
            self.item_vectors(positives),
            self.category_vectors(target_categories),
            negative_vectors,
            category_vectors,
            self.purchase_head(profiles).squeeze(-1),
        )

    def shared_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.named_parameters() if is_shared(n)}

    def local_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach() for n, p in self.named_parameters() if not is_shared(n)}

    def load_shared_state(self, shared) -> None:
        """Copy in global shared weights; refuse any that do not fit: missing, extra or wrongly shaped."""
        expected = {name: tuple(t.shape) for name, t in self.shared_state().items()}
        got = {name: tuple(value.shape) for name, value in shared.items()}
        if set(got) != set(expected):
            missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
            raise ValueError(f"global weights do not match the model: missing {missing[:5]}, unexpected {extra[:5]}")
        wrong = [f"{n} {got[n]} != {expected[n]}" for n in expected if got[n] != expected[n]]
        if wrong:
            raise ValueError("global weights have the wrong shapes (is the model config the same?): " + "; ".join(wrong[:5]))
        params = dict(self.named_parameters())
        with torch.no_grad():
            for name, value in shared.items():
                params[name].copy_(torch.as_tensor(value, dtype=params[name].dtype))

    def load_local_state(self, local) -> None:
        """Copy in this merchant's own weights where names and shapes still match (a grown catalogue starts anew)."""
        params = dict(self.named_parameters())
        with torch.no_grad():
            for name, value in local.items():
                if name in params and tuple(params[name].shape) == tuple(value.shape):
                    params[name].copy_(value)

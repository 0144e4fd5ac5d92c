"""Secure summation of merchants' vectors: SecAgg (Bell et al. 2020) on Flower's and `cryptography`'s primitives."""

from __future__ import annotations

import base64
import hashlib
import math
import os
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import decrypt, encrypt, generate_shared_key
from flwr.common.secure_aggregation.secaggplus_utils import (
    share_keys_plaintext_concat,
    share_keys_plaintext_separate,
)
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key,
    bytes_to_public_key,
    generate_key_pairs,
    private_key_to_bytes,
    public_key_to_bytes,
)

# Vectors are summed in Z_{2^64}: numpy's uint64 arithmetic wraps there, so masking is plain addition.
HEADROOM_BITS = 62  # the encoded sum of every party stays below 2^62 in magnitude, far from wrapping at 2^63
# A message's record that sets up the next round's sum beside a stage of this one (its keys beside the masked step,
# its shares beside the unmask), both ways: after the first round a round takes two message stages, not four.
NEXT = "next"


class SecureSumError(ValueError):
    """A step of the protocol cannot go on; the text says which and why."""


@dataclass(frozen=True, kw_only=True)
class SumPlan:
    """What every party of one secure sum agrees on (the coordinator sends it; each merchant checks it).

    `bound`: the largest magnitude one party's coordinate may take (the clipping norm times the most customers
    it may sample, plus 40 standard deviations of its noise share); `min_survivors`: the fewest parties whose
    vectors the sum must contain (M_min), or the round is discarded; `threshold`: shares that rebuild a
    secret (more than the colluding parties assumed, and a majority)."""

    parties: tuple[int, ...]
    threshold: int
    min_survivors: int
    bound: float
    length: int

    def __post_init__(self):
        n = len(self.parties)
        if len(set(self.parties)) != n or n < 2:
            raise SecureSumError(f"a secure sum needs at least 2 distinct parties, got {list(self.parties)}")
        if not (n // 2 + 1 <= self.threshold <= n):
            raise SecureSumError(f"threshold {self.threshold} must be a majority of the {n} parties and at most {n}")
        if not (self.threshold <= self.min_survivors <= n):
            raise SecureSumError(f"min survivors {self.min_survivors} must be between the threshold {self.threshold} "
                                 f"and the {n} parties")
        if not (math.isfinite(self.bound) and self.bound > 0) or self.length < 1:
            raise SecureSumError("bound must be positive and finite, length at least 1")

    @property
    def recovers(self) -> bool:
        """Whether the sum may go on without some parties (`min_survivors` below their number): only then are secrets
        shared and an unmask stage asked. A sum of every party needs neither: the pairwise masks cancel when every
        vector is in, and a sum short of one is discarded, so the coordinator learns the same sum and no secret."""
        return self.min_survivors < len(self.parties)

    @property
    def scale(self) -> float:
        """Fixed-point scale: n parties' values of magnitude `bound` sum to under 2^62."""
        return 2.0 ** (HEADROOM_BITS - math.ceil(math.log2(len(self.parties) * self.bound)))

    @property
    def resolution(self) -> float:
        """The rounding step of one coordinate of one party's value (its error is at most half of it)."""
        return 1.0 / self.scale

    def to_config(self) -> dict:
        return {"secagg.parties": [int(p) for p in self.parties], "secagg.threshold": self.threshold,
                "secagg.min-survivors": self.min_survivors, "secagg.bound": float(self.bound),
                "secagg.length": self.length}

    @classmethod
    def from_config(cls, config) -> "SumPlan":
        try:
            return cls(parties=tuple(int(p) for p in config["secagg.parties"]),
                       threshold=int(config["secagg.threshold"]), min_survivors=int(config["secagg.min-survivors"]),
                       bound=float(config["secagg.bound"]), length=int(config["secagg.length"]))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, SecureSumError):
                raise
            raise SecureSumError(f"the secure-sum plan is incomplete or malformed: {exc!r}") from None


def encode(values: np.ndarray, plan: SumPlan) -> np.ndarray:
    """Float values -> fixed point in Z_{2^64}. Refuses (never clips) a value that is not finite or out of
    the plan's bound, with the count."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.shape[0] != plan.length:
        raise SecureSumError(f"vector of length {values.shape[0]}, the plan says {plan.length}")
    bad = ~np.isfinite(values) | (np.abs(values) > plan.bound)
    if bad.any():
        raise SecureSumError(f"{int(bad.sum())} of {values.size} values are not finite or exceed the bound "
                             f"{plan.bound:g} (largest {np.nanmax(np.abs(values)):g}); nothing was sent")
    scaled = np.multiply(values, plan.scale)
    np.rint(scaled, out=scaled)
    return scaled.astype(np.int64).view(np.uint64)


def decode(total: np.ndarray, plan: SumPlan) -> np.ndarray:
    """The unmasked sum in Z_{2^64} -> floats."""
    return np.asarray(total, dtype=np.uint64).view(np.int64).astype(np.float64) / plan.scale


def expand(seed: bytes, length: int) -> np.ndarray:
    """A mask of `length` uniform 64-bit words from a 32-byte seed: the ChaCha20 keystream (`cryptography`).
    Flower's `pseudo_rand_gen` is not used: it folds the seed into 32 bits for numpy's Mersenne Twister,
    which a coordinator could search exhaustively."""
    if len(seed) != 32:
        raise SecureSumError("a mask seed is 32 bytes")
    out = np.zeros(length, dtype=np.uint64)
    stream = Cipher(algorithms.ChaCha20(seed, b"\x00" * 16), mode=None).encryptor()
    view = memoryview(out).cast("B")
    stream.update_into(view, view)  # the keystream XOR zeros, written in place: no copies of a long vector
    return out


def sum_digest(plan: SumPlan, public_keys: dict[int, tuple[bytes, bytes]]) -> bytes:
    """One sum's identity: its plan and its parties' public keys (a later stage must bring the same ones)."""
    digest = hashlib.sha256(repr(sorted(plan.to_config().items())).encode())
    for party in sorted(public_keys):
        digest.update(int(party).to_bytes(8, "little") + b"".join(public_keys[party]))
    return digest.digest()


def _pair_seed(private_key: bytes, public_key: bytes) -> bytes:
    return base64.urlsafe_b64decode(generate_shared_key(bytes_to_private_key(private_key),
                                                        bytes_to_public_key(public_key)))


@dataclass
class Party:
    """One merchant's side of one secure sum. Its secrets live in the ClientApp's context state between the
    protocol's messages (`state_dict()`), never on disk and never in a reply."""

    node_id: int
    cipher_sk: bytes = b""  # key agreement for encrypting shares to the other parties
    mask_sk: bytes = b""  # key agreement for the pairwise masks
    self_seed: bytes = b""  # the self mask, revealed (through shares) only if this party's vector counts
    received: dict[int, bytes] = field(default_factory=dict)  # encrypted shares other parties sent to this one
    sharers: tuple[int, ...] = ()
    answered: bool = False  # a party reveals shares once per sum: never both secrets of one party
    sum_digest: bytes = b""  # the plan and public keys it shared or masked under: later stages must bring the same

    # ---- stage 1: public keys ----
    def keys(self) -> tuple[bytes, bytes]:
        cipher_sk, cipher_pk = generate_key_pairs()
        mask_sk, mask_pk = generate_key_pairs()
        self.cipher_sk, self.mask_sk = private_key_to_bytes(cipher_sk), private_key_to_bytes(mask_sk)
        return public_key_to_bytes(cipher_pk), public_key_to_bytes(mask_pk)

    # ---- stage 2: shares of its secrets, encrypted to each other party ----
    def share(self, plan: SumPlan, public_keys: dict[int, tuple[bytes, bytes]]) -> dict[int, bytes]:
        if not plan.recovers:
            raise SecureSumError("a sum of every party shares no secrets (its plan recovers no dropped party)")
        self._check_keys(plan, public_keys)
        self.self_seed = os.urandom(32)
        seed_shares = create_shares(self.self_seed, plan.threshold, len(plan.parties))
        key_shares = create_shares(self.mask_sk, plan.threshold, len(plan.parties))
        out = {}
        for index, other in enumerate(plan.parties):
            plaintext = share_keys_plaintext_concat(self.node_id, other, seed_shares[index], key_shares[index])
            if other == self.node_id:
                self.received[other] = plaintext  # its own share, kept in the clear (it never leaves)
                continue
            key = generate_shared_key(bytes_to_private_key(self.cipher_sk), bytes_to_public_key(public_keys[other][0]))
            out[other] = encrypt(key, plaintext)
        self.sum_digest = sum_digest(plan, public_keys)
        return out

    # ---- stage 3: the masked vector ----
    def mask(self, encoded: np.ndarray, plan: SumPlan, *, received: dict[int, bytes], sharers: list[int],
             public_keys: dict[int, tuple[bytes, bytes]]) -> np.ndarray:
        """`received`: the ciphertexts addressed to this party; `sharers`: the parties whose shares went out
        (they all mask with each other)."""
        if not plan.recovers:
            raise SecureSumError("a sum of every party is masked without a self mask (mask_whole)")
        self.ready(plan, public_keys=public_keys)
        sharers = sorted(set(sharers))
        if self.node_id not in sharers or len(sharers) < plan.min_survivors:
            raise SecureSumError(f"{len(sharers)} parties shared keys, fewer than the {plan.min_survivors} "
                                 "the round needs; no vector is sent")
        if set(received) != set(sharers) - {self.node_id}:
            raise SecureSumError("shares from some parties that shared keys did not arrive")
        self.received.update(received)
        self.sharers = tuple(sharers)
        masked = expand(self.self_seed, plan.length)
        np.add(masked, encoded.astype(np.uint64, copy=False), out=masked)  # uint64 wraps: arithmetic mod 2^64
        return self._pair_masks(masked, sharers, plan, public_keys)

    # ---- stage 3 of a sum of every party: the only one after the keys ----
    def mask_whole(self, encoded: np.ndarray, plan: SumPlan, *,
                   public_keys: dict[int, tuple[bytes, bytes]]) -> np.ndarray:
        """The vector masked with a pairwise mask per other party and no self mask: a sum that needs every party's
        vector (`not plan.recovers`) reveals nothing but the sum, and nothing is shared or unmasked. Once per sum,
        and never for a party that shared its secrets for a sum that recovers dropped parties."""
        if plan.recovers:
            raise SecureSumError("the plan lets parties drop out: their masks need the shares and the self mask")
        self.ready(plan, public_keys=public_keys)
        self.answered, self.sum_digest, self.sharers = True, sum_digest(plan, public_keys), tuple(plan.parties)
        return self._pair_masks(np.array(encoded, dtype=np.uint64), plan.parties, plan, public_keys)

    def _pair_masks(self, masked: np.ndarray, parties, plan: SumPlan, public_keys) -> np.ndarray:
        """Add this party's pairwise mask with each other party in place: + below the other's id, - above, so each
        pair's masks cancel in the sum."""
        for other in parties:
            if other != self.node_id:
                pair = expand(_pair_seed(self.mask_sk, public_keys[other][1]), plan.length)
                (np.add if self.node_id < other else np.subtract)(masked, pair, out=masked)
        return masked

    def ready(self, plan: SumPlan, *, public_keys: dict[int, tuple[bytes, bytes]]) -> None:
        """Raise unless this party can mask a vector for `plan` (checked before its step is taken and paid for): for
        a sum that recovers dropped parties, after sharing under these keys; for a sum of every party, once, with
        its own public key in the plan, and never after sharing (it masks one way only)."""
        if plan.recovers:
            if not self.self_seed:
                raise SecureSumError("this party shared no secrets for a sum that recovers dropped parties")
            self._same_sum(plan, public_keys)
            return
        if self.self_seed or self.answered:
            raise SecureSumError("this party has already shared or masked for this sum; it masks once, one way")
        self._check_keys(plan, public_keys)
        if public_key_to_bytes(bytes_to_private_key(self.mask_sk).public_key()) != public_keys[self.node_id][1]:
            raise SecureSumError("the plan's public key for this party is not the one it sent")

    def _check_keys(self, plan: SumPlan, public_keys: dict[int, tuple[bytes, bytes]]) -> None:
        if self.node_id not in plan.parties or set(public_keys) != set(plan.parties):
            raise SecureSumError("the public keys do not match the plan's parties")
        if len({pk for pair in public_keys.values() for pk in pair}) != 2 * len(public_keys):
            raise SecureSumError("two parties sent the same public key")

    # ---- stage 4: shares that unmask the sum ----
    def unmask(self, plan: SumPlan, *, survivors: list[int], dropped: list[int],
               public_keys: dict[int, tuple[bytes, bytes]]) -> dict[int, bytes]:
        """The share of each survivor's self-mask seed and of each dropped party's mask key. Refuses to answer
        twice, to name a party both ways, or to unmask a sum of fewer than `min_survivors` vectors (which would
        let the coordinator single a party's vector out)."""
        self._same_sum(plan, public_keys)
        if self.answered:
            raise SecureSumError("this party has already revealed its shares for this sum")
        survivors_set, dropped_set = set(survivors), set(dropped)
        if survivors_set & dropped_set or (survivors_set | dropped_set) != set(self.sharers):
            raise SecureSumError("survivors and dropped parties must split the parties that shared keys")
        if len(survivors_set) < plan.min_survivors or self.node_id not in survivors_set:
            raise SecureSumError(f"{len(survivors_set)} vectors arrived, fewer than the {plan.min_survivors} a "
                                 "sum needs; this round is discarded and no share is revealed")
        self.answered = True
        out = {}
        for other in sorted(survivors_set | dropped_set):
            ciphertext = self.received[other]
            if other == self.node_id:
                plaintext = ciphertext
            else:
                key = generate_shared_key(bytes_to_private_key(self.cipher_sk),
                                          bytes_to_public_key(public_keys[other][0]))
                plaintext = decrypt(key, ciphertext)
            source, destination, seed_share, key_share = share_keys_plaintext_separate(plaintext)
            if (source, destination) != (other, self.node_id):
                raise SecureSumError(f"a share claims to come from {source} to {destination}, expected "
                                     f"{other} to {self.node_id}")
            out[other] = seed_share if other in survivors_set else key_share
        return out

    def _same_sum(self, plan: SumPlan, public_keys) -> None:
        if not self.sum_digest or sum_digest(plan, public_keys) != self.sum_digest:
            raise SecureSumError("the plan or the public keys differ from those this party shared its secrets under")

    # ---- persistence between the ClientApp's processes ----
    def state_dict(self) -> dict[str, bytes]:
        state = {"node": self.node_id.to_bytes(8, "little"), "cipher_sk": self.cipher_sk, "mask_sk": self.mask_sk,
                 "self_seed": self.self_seed, "answered": bytes([self.answered]), "sum": self.sum_digest,
                 "sharers": b"".join(p.to_bytes(8, "little") for p in self.sharers)}
        for other, blob in self.received.items():
            state[f"received-{other}"] = blob
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, bytes]) -> "Party":
        sharers = state.get("sharers", b"")
        party = cls(node_id=int.from_bytes(state["node"], "little"), cipher_sk=state["cipher_sk"],
                    mask_sk=state["mask_sk"], self_seed=state["self_seed"], answered=bool(state["answered"][0]),
                    sum_digest=state["sum"],
                    sharers=tuple(int.from_bytes(sharers[i:i + 8], "little") for i in range(0, len(sharers), 8)))
        party.received = {int(k.split("-", 1)[1]): v for k, v in state.items() if k.startswith("received-")}
        return party


def unmasked_sum(plan: SumPlan, *, masked: dict[int, np.ndarray], shares: dict[int, dict[int, bytes]],
                 sharers: list[int], public_keys: dict[int, tuple[bytes, bytes]]) -> np.ndarray:
    """The coordinator's side: the sum of the survivors' encoded vectors, from their masked vectors and at least
    `threshold` parties' shares (`shares[answering][about]`; none for a sum of every party, whose pairwise masks
    cancel). Raises SecureSumError when the round must be discarded (too few survivors or shares)."""
    survivors = sorted(masked)
    dropped = sorted(set(sharers) - set(survivors))
    if len(survivors) < plan.min_survivors:
        raise SecureSumError(f"{len(survivors)} vectors arrived, fewer than the {plan.min_survivors} a sum needs")
    if not plan.recovers and survivors != sorted(plan.parties):
        raise SecureSumError("vectors came from others than the plan's parties")
    if plan.recovers and len(shares) < plan.threshold:
        raise SecureSumError(f"{len(shares)} parties revealed shares, fewer than the threshold {plan.threshold}")
    total = np.zeros(plan.length, dtype=np.uint64)
    for vector in masked.values():
        np.add(total, np.asarray(vector, dtype=np.uint64), out=total)
    if not plan.recovers:  # every party's vector is in: the pairwise masks have cancelled
        return total
    for party in survivors:  # remove each survivor's self mask
        seed = combine_shares([answer[party] for answer in shares.values()][: plan.threshold])
        np.subtract(total, expand(seed, plan.length), out=total)
    for party in dropped:  # a dropped party's pairwise masks with the survivors are still in their vectors
        mask_sk = combine_shares([answer[party] for answer in shares.values()][: plan.threshold])
        for other in survivors:
            pair = expand(_pair_seed(mask_sk, public_keys[other][1]), plan.length)
            # the survivor added the pair mask if its id is below the dropped party's, else subtracted it
            (np.subtract if other < party else np.add)(total, pair, out=total)
    return total

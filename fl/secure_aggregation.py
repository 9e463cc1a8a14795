"""Secure aggregation with pairwise masks (Bonawitz et al. CCS 2017; SecAgg+ graphs).

Top layer (``fl``). The server learns the sum of the updates of the clients
that survive the round, and nothing else about any single update, even when
clients drop out at any stage, as long as at least ``threshold`` of them stay.

Protocol:
    Let ``U0`` be the selected clients, ``N(u)`` the neighbours of ``u``
    (all other clients, or ``k`` of them on a public random ring for SecAgg+)
    and ``H(u) = N(u) + {u}`` the holders of ``u``'s secret shares.

    0. ``ADVERTISE_KEYS``: each client ``u`` makes two X25519 key pairs
       ``(c_pk, c_sk)`` (channel) and ``(s_pk, s_sk)`` (masks) and sends the
       public keys. ``U1`` = clients that answered; need ``|U1| >= t``.
    1. ``SHARE_KEYS``: the server sends each ``u`` the keys of ``N(u) & U1``.
       ``u`` draws a 256-bit self-mask seed ``b_u``, Shamir-shares ``b_u`` and
       ``s_sk`` t-of-``|H(u)|`` over GF(2^521-1), and sends each share to its
       holder ``v`` encrypted with AES-GCM under ``KDF(DH(c_sk_u, c_pk_v))``
       (routed by the server). ``U2`` = clients that answered; need ``|U2| >= t``.
    2. ``INPUT``: the server routes the ciphertexts and announces ``U2``. Each
       ``u`` quantizes its weighted update into ``Z_2^32`` (:class:`~fl.clipping.Quantizer`)
       and sends ``y_u = x_u + PRG(b_u) + sum_{v in N(u) & U2} +-PRG(s_uv)``
       with ``s_uv = KDF(DH(s_sk_u, s_pk_v))`` (``+`` if ``u < v``). PRG is
       AES-128-CTR. ``U3`` = clients that answered; need ``|U3| >= t``.
    3. ``UNMASK``: the server announces ``U3`` and ``D = U2 - U3``. Each
       ``v`` checks ``U3`` and ``D`` are disjoint and ``|U3| >= t`` and returns
       its shares of ``b_u`` for ``u in U3`` and of ``s_sk_w`` for ``w in D``
       (never both for one client). ``U4`` = answering clients; every secret
       needs ``t`` shares. The server rebuilds ``b_u`` and ``s_sk_w``, removes
       the self masks and the dropped clients' pair masks, and decodes
       ``sum_{u in U3} x_u``.

Cost:
    Per client: 2 key generations, ``|N(u)|`` x 2 key agreements, 2 Shamir
    splits of degree ``t-1``, ``|N(u)|+1`` AES-CTR mask expansions of
    ``4 * dim`` bytes. Upload: ``4 * dim`` bytes for the masked vector plus
    ``~ (64 + 196 |N(u)| + 66 |N(u)|)`` bytes of keys and shares (so
    4 bytes per parameter for large models). Server: ``|U3|`` self-mask
    expansions, ``sum_{w in D} |N(w) & U3|`` pair-mask expansions, and
    ``|U3| + |D|`` Lagrange interpolations. With ``k`` neighbours instead of
    all pairs, the client and dropout costs fall from ``O(n)`` to ``O(k)``.

Security:
    Semi-honest server and clients (the "honest-but-curious" model of
    Bonawitz et al.); the server routes messages but cannot read the
    encrypted shares. A single masked vector is uniformly distributed in
    ``Z_2^32^dim`` (the self mask alone is a one-time pad from a CSPRNG), so
    the server learns only the sum over ``U3``. Breaking a client's privacy
    takes the server plus ``t`` holders of that client's shares colluding (or
    ``t`` clients alone colluding against one), so choose ``t > n/2``
    (the default is a majority of the holders). An actively malicious server
    that lies about ``U3`` to different clients is outside this model (it
    needs the consistency-check round of the paper). DH keys, seeds and masks
    come from ``os.urandom``/``secrets``, never from a seeded generator.
"""

from __future__ import annotations

import hashlib
import math
import os
import secrets
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fl import shamir
from fl.aggregators import Aggregator, Stage, check_update, prepare_contribution
from fl.clipping import Quantizer
from fl.dp import DifferentialPrivacy, GaussianNoise
from fl.errors import (
    ConfigError,
    InsufficientClientsError,
    ProtocolError,
    QuantizationRangeError,
)
from fl.types import AggregateResult

__all__ = [
    "AdvertiseKeys",
    "EncryptedShares",
    "KeyRoster",
    "MaskedInput",
    "MaskingAggregator",
    "MaskingClient",
    "MaskingServer",
    "MaskingSetup",
    "ShareDelivery",
    "UnmaskRequest",
    "UnmaskShares",
    "expand_mask",
    "neighbour_graph",
]

_ID = 8  # bytes to count for one client id on the wire


# ----------------------------------------------------------------- messages
@dataclass(frozen=True, slots=True)
class MaskingSetup:
    """Server -> client, stage ADVERTISE_KEYS: round parameters."""

    round_id: bytes
    participants: tuple[int, ...]
    neighbours: tuple[int, ...]
    threshold: int
    weight: float
    dim: int
    clip_range: float
    noise_std: float = 0.0
    bits: int = 32
    stage: Stage = Stage.ADVERTISE_KEYS

    def nbytes(self) -> int:
        """Payload size."""
        return len(self.round_id) + _ID * (len(self.participants) + len(self.neighbours)) + 40


@dataclass(frozen=True, slots=True)
class AdvertiseKeys:
    """Client -> server: the two public keys."""

    client_id: int
    c_pk: bytes
    s_pk: bytes
    stage: Stage = Stage.ADVERTISE_KEYS

    def nbytes(self) -> int:
        """Payload size."""
        return _ID + len(self.c_pk) + len(self.s_pk)


@dataclass(frozen=True, slots=True)
class KeyRoster:
    """Server -> client, stage SHARE_KEYS: public keys of the client's live neighbours."""

    keys: Mapping[int, tuple[bytes, bytes]]
    stage: Stage = Stage.SHARE_KEYS

    def nbytes(self) -> int:
        """Payload size."""
        return sum(_ID + len(a) + len(b) for a, b in self.keys.values())


@dataclass(frozen=True, slots=True)
class EncryptedShares:
    """Client -> server: one AES-GCM ciphertext of shares per holder."""

    client_id: int
    ciphertexts: Mapping[int, bytes]
    stage: Stage = Stage.SHARE_KEYS

    def nbytes(self) -> int:
        """Payload size."""
        return _ID + sum(_ID + len(c) for c in self.ciphertexts.values())


@dataclass(frozen=True, slots=True)
class ShareDelivery:
    """Server -> client, stage INPUT: ``U2`` and the ciphertexts addressed to the client."""

    u2: tuple[int, ...]
    ciphertexts: Mapping[int, bytes]
    stage: Stage = Stage.INPUT

    def nbytes(self) -> int:
        """Payload size."""
        return _ID * len(self.u2) + sum(_ID + len(c) for c in self.ciphertexts.values())


@dataclass(frozen=True, slots=True)
class MaskedInput:
    """Client -> server: the masked, quantized update, packed (:meth:`Quantizer.pack`)."""

    client_id: int
    y: np.ndarray
    stage: Stage = Stage.INPUT

    def nbytes(self) -> int:
        """Payload size."""
        return _ID + int(self.y.nbytes)


@dataclass(frozen=True, slots=True)
class UnmaskRequest:
    """Server -> client, stage UNMASK: who survived (``U3``) and who dropped (``U2 - U3``)."""

    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    stage: Stage = Stage.UNMASK

    def nbytes(self) -> int:
        """Payload size."""
        return _ID * (len(self.survivors) + len(self.dropped))


@dataclass(frozen=True, slots=True)
class UnmaskShares:
    """Client -> server: shares of survivors' ``b_u`` and dropped clients' ``s_sk``."""

    client_id: int
    b_shares: Mapping[int, int]
    s_shares: Mapping[int, int]
    stage: Stage = Stage.UNMASK

    def nbytes(self) -> int:
        """Payload size."""
        return _ID + (len(self.b_shares) + len(self.s_shares)) * (_ID + shamir.SHARE_BYTES)


# ----------------------------------------------------------------- helpers
def neighbour_graph(
    participants: tuple[int, ...], k: int | None, round_id: bytes
) -> dict[int, tuple[int, ...]]:
    """Neighbours of each participant (all pairs, or a SecAgg+ ring).

    Everyone (``k=None`` or ``k >= n-1``), else a ``k``-regular Harary ring
    over a public pseudo-random order derived from ``round_id``
    (each client is linked to ``ceil(k/2)`` clients on each side, so degree ``2*ceil(k/2)``).
    """
    n = len(participants)
    if k is None or k >= n - 1:
        return {u: tuple(v for v in participants if v != u) for u in participants}
    order = sorted(
        participants, key=lambda c: hashlib.sha256(round_id + struct.pack("<q", c)).digest()
    )
    half = math.ceil(k / 2)
    pos = {c: i for i, c in enumerate(order)}
    out: dict[int, tuple[int, ...]] = {}
    for u in participants:
        i = pos[u]
        nb = {order[(i + d) % n] for d in range(-half, half + 1) if d != 0}
        nb.discard(u)
        out[u] = tuple(sorted(nb))
    return out


def _kdf(label: bytes, round_id: bytes, secret: bytes, size: int) -> bytes:
    return hashlib.sha256(b"fl-secagg/" + label + b"/" + round_id + secret).digest()[:size]


def _keystream(key: bytes) -> Any:
    """AES-128-CTR keystream under ``key`` (counter ``0^96 || i``, ``i`` from 2).

    Computed by OpenSSL's AES-GCM encryption of zeros, which is the CTR
    keystream (the tag is never produced) on OpenSSL's vectorised GCM path,
    about twice as fast as its CTR mode. Each key is used for one mask only.
    """
    return Cipher(algorithms.AES(key), modes.GCM(b"\x00" * 12)).encryptor()


def expand_mask(key: bytes, dim: int) -> np.ndarray:
    """AES-128-CTR keystream of ``4 * dim`` bytes viewed as ``uint32[dim]`` (a CSPRNG).

    Args:
        key: 16-byte AES key.
        dim: Number of ring elements.
    """
    out = np.zeros(dim, dtype=np.uint32)
    return _Masker().apply(out, [key], [])


# Elements per chunk: 16 Ki uint32 = 64 KiB of keystream per key, so one chunk
# of every key's stream and the running sums stay in the CPU's L2 cache.
_CHUNK = 1 << 14


class _Masker:
    """Adds ``sum(PRG(k) for k in plus) - sum(PRG(k) for k in minus)`` to a ``uint32`` vector.

    Streams every key's AES-128-CTR keystream chunk by chunk into a
    cache-resident ``[keys, chunk]`` block and folds the block into the vector
    with one reduction, instead of writing each whole mask to memory and adding
    it in a separate pass: the same keystream, about half the memory traffic.
    Reusable across calls (the block is kept).
    """

    __slots__ = ("_block", "_zeros")

    def __init__(self) -> None:
        self._block = bytearray()
        self._zeros = bytes(4 * _CHUNK)

    def apply(self, y: np.ndarray, plus: list[bytes], minus: list[bytes]) -> np.ndarray:
        """Mask ``y`` in place (mod 2^32) and return it."""
        keys = [*plus, *minus]
        if not keys or y.shape[0] == 0:
            return y
        dim, p, k = y.shape[0], len(plus), len(keys)
        chunk = min(_CHUNK, dim)
        need = 4 * k * chunk + 15  # update_into wants 15 spare bytes after the last row
        if len(self._block) < need:
            self._block = bytearray(need)
        encs = [_keystream(key) for key in keys]
        rows = torch.frombuffer(self._block, dtype=torch.int32, count=k * chunk).view(k, chunk)
        acc = torch.empty(chunk, dtype=torch.int32)
        yt = torch.from_numpy(y.view(np.int32))  # int32 adds wrap: arithmetic modulo 2^32
        mv = memoryview(self._block)
        for start in range(0, dim, chunk):
            n = min(chunk, dim - start)
            zeros = memoryview(self._zeros)[: 4 * n]
            for i, enc in enumerate(encs):
                off = 4 * i * chunk
                enc.update_into(zeros, mv[off : off + 4 * n + 15])
            seg, part = yt[start : start + n], acc[:n]
            if p:
                seg.add_(torch.sum(rows[:p, :n], dim=0, dtype=torch.int32, out=part))
            if p < k:
                seg.sub_(torch.sum(rows[p:, :n], dim=0, dtype=torch.int32, out=part))
        return y


def _pair_key(sk: X25519PrivateKey, pk: bytes, round_id: bytes) -> bytes:
    shared = sk.exchange(X25519PublicKey.from_public_bytes(pk))
    return _kdf(b"mask", round_id, shared, 16)


def _self_key(seed: bytes, round_id: bytes) -> bytes:
    return _kdf(b"self", round_id, seed, 16)


def _nonce(sender: int) -> bytes:
    return struct.pack("<qI", sender, 0)


def _ad(sender: int, receiver: int, round_id: bytes) -> bytes:
    return round_id + struct.pack("<qq", sender, receiver)


# ------------------------------------------------------------------ client
@dataclass(slots=True)
class _ClientState:
    stage: Any = Stage.ADVERTISE_KEYS
    setup: MaskingSetup | None = None
    c_sk: X25519PrivateKey | None = None
    s_sk: X25519PrivateKey | None = None
    roster: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    b_seed: bytes = b""
    held_b: dict[int, int] = field(default_factory=dict)  # shares I hold of others' b_u
    held_s: dict[int, int] = field(default_factory=dict)  # shares I hold of others' s_sk
    channel: dict[int, bytes] = field(default_factory=dict)  # AES-GCM key per peer
    u2: tuple[int, ...] = ()
    sent_input: bool = False


class MaskingClient:
    """Client side of one masking round: a state machine over :class:`Stage`.

    Each stage's method may be called once, in order; anything else is a
    :class:`~fl.errors.ProtocolError` (a test checks every (from, to) pair).

    Args:
        client_id: This client's id.
        delta: The client's update (flat float vector).
        dp: The aggregator's DP option (clipping; distributed noise).
        noise_generator: Source of this client's DP noise share.
    """

    def __init__(
        self,
        client_id: int,
        delta: torch.Tensor,
        *,
        dp: DifferentialPrivacy | None = None,
        noise_generator: GaussianNoise | None = None,
        scratch: _Masker | None = None,
    ) -> None:
        self.scratch = scratch
        self.client_id = client_id
        self.delta = delta
        self.dp = dp
        self.noise_generator = noise_generator
        self.state = _ClientState()

    def respond(self, message: Any) -> Any:
        """Dispatch a server message to the stage handler."""
        if isinstance(message, MaskingSetup):
            return self.advertise_keys(message)
        if isinstance(message, KeyRoster):
            return self.share_keys(message)
        if isinstance(message, ShareDelivery):
            return self.masked_input(message)
        if isinstance(message, UnmaskRequest):
            return self.unmask(message)
        raise ProtocolError(f"client {self.client_id}: unexpected message {type(message).__name__}")

    def _expect(self, stage: Stage) -> MaskingSetup:
        if self.state.stage is not stage:
            raise ProtocolError(
                f"client {self.client_id}: got a `{stage}` message "
                f"while at stage `{self.state.stage}`"
            )
        if stage is not Stage.ADVERTISE_KEYS:
            assert self.state.setup is not None
        return self.state.setup  # type: ignore[return-value]

    def advertise_keys(self, setup: MaskingSetup) -> AdvertiseKeys:
        """Stage 0: make the two key pairs, send the public halves."""
        self._expect(Stage.ADVERTISE_KEYS)
        if self.client_id not in setup.participants:
            raise ProtocolError(f"client {self.client_id} is not among the round's participants")
        if self.delta.numel() != setup.dim:
            raise ProtocolError(
                f"client {self.client_id}: update has {self.delta.numel()} values; "
                f"round expects {setup.dim}"
            )
        st = self.state
        st.setup = setup
        st.c_sk, st.s_sk = X25519PrivateKey.generate(), X25519PrivateKey.generate()
        st.stage = Stage.SHARE_KEYS
        return AdvertiseKeys(
            self.client_id,
            st.c_sk.public_key().public_bytes_raw(),
            st.s_sk.public_key().public_bytes_raw(),
        )

    def _x(self, cid: int) -> int:
        assert self.state.setup is not None
        return self.state.setup.participants.index(cid) + 1

    def share_keys(self, roster: KeyRoster) -> EncryptedShares:
        """Stage 1: Shamir-share ``b_u`` and ``s_sk`` among live holders, encrypt each share."""
        setup = self._expect(Stage.SHARE_KEYS)
        st = self.state
        assert st.c_sk is not None and st.s_sk is not None
        allowed = set(setup.neighbours)
        for v in roster.keys:
            if v != self.client_id and v not in allowed:
                raise ProtocolError(f"client {self.client_id}: roster holds non-neighbour {v}")
        st.roster = {v: k for v, k in roster.keys.items() if v != self.client_id}
        holders = sorted(st.roster) + [self.client_id]
        if len(holders) < setup.threshold:
            raise InsufficientClientsError(Stage.SHARE_KEYS.value, len(holders), setup.threshold)
        st.b_seed = secrets.token_bytes(32)
        xs = [self._x(v) for v in holders]
        b_sh = shamir.split(int.from_bytes(st.b_seed, "big"), setup.threshold, xs)
        s_sh = shamir.split(int.from_bytes(st.s_sk.private_bytes_raw(), "big"), setup.threshold, xs)
        st.held_b[self.client_id] = b_sh[self._x(self.client_id)]
        st.held_s[self.client_id] = s_sh[self._x(self.client_id)]
        out: dict[int, bytes] = {}
        for v, (c_pk, _) in st.roster.items():
            key = _kdf(
                b"enc",
                setup.round_id,
                st.c_sk.exchange(X25519PublicKey.from_public_bytes(c_pk)),
                32,
            )
            st.channel[v] = key  # symmetric: the same key decrypts v's shares to us
            plain = b_sh[self._x(v)].to_bytes(shamir.SHARE_BYTES, "big") + s_sh[
                self._x(v)
            ].to_bytes(shamir.SHARE_BYTES, "big")
            out[v] = AESGCM(key).encrypt(
                _nonce(self.client_id), plain, _ad(self.client_id, v, setup.round_id)
            )
        st.stage = Stage.INPUT
        return EncryptedShares(self.client_id, out)

    def masked_input(self, delivery: ShareDelivery) -> MaskedInput:
        """Stage 2: decrypt received shares, send the masked quantized update."""
        setup = self._expect(Stage.INPUT)
        st = self.state
        assert st.c_sk is not None and st.s_sk is not None
        if len(delivery.u2) < setup.threshold:
            raise InsufficientClientsError(Stage.INPUT.value, len(delivery.u2), setup.threshold)
        if self.client_id not in delivery.u2:
            raise ProtocolError(f"client {self.client_id} is missing from U2")
        for u, ct in delivery.ciphertexts.items():
            if u not in st.roster:
                raise ProtocolError(f"client {self.client_id}: share from unknown client {u}")
            key = st.channel[u]
            try:
                plain = AESGCM(key).decrypt(_nonce(u), ct, _ad(u, self.client_id, setup.round_id))
            except InvalidTag as exc:
                raise ProtocolError(
                    f"client {self.client_id}: share from {u} fails authentication"
                ) from exc
            st.held_b[u] = int.from_bytes(plain[: shamir.SHARE_BYTES], "big")
            st.held_s[u] = int.from_bytes(plain[shamir.SHARE_BYTES :], "big")
        st.u2 = tuple(delivery.u2)
        quantizer = Quantizer(setup.clip_range, len(setup.participants), setup.bits)
        name = f"client {self.client_id}'s weighted update"
        check_update(self.delta, f"client {self.client_id}'s update")
        if self.dp is None:
            y = quantizer.quantize(self.delta, multiplier=setup.weight, name=name)
        else:
            x = prepare_contribution(self.delta, setup.weight, self.dp, name=name)
            if setup.noise_std > 0:
                noise = self.noise_generator or GaussianNoise()  # a fresh key if none given
                x = x + noise.normal(setup.noise_std, x.shape, x.dtype)
            y = quantizer.quantize(x, name=name)
        plus: list[bytes] = [_self_key(st.b_seed, setup.round_id)]
        minus: list[bytes] = []
        live = set(delivery.u2)
        for v, (_, s_pk) in st.roster.items():
            if v in live:
                key = _pair_key(st.s_sk, s_pk, setup.round_id)
                (plus if self.client_id < v else minus).append(key)
        (self.scratch or _Masker()).apply(y, plus, minus)
        y = quantizer.pack(y)
        st.stage = Stage.UNMASK
        st.sent_input = True
        return MaskedInput(self.client_id, y)

    def unmask(self, request: UnmaskRequest) -> UnmaskShares:
        """Stage 3: reveal shares of survivors' self seeds and dropped clients' mask keys."""
        setup = self._expect(Stage.UNMASK)
        st = self.state
        survivors, dropped = set(request.survivors), set(request.dropped)
        if survivors & dropped:
            raise ProtocolError(
                f"client {self.client_id}: server asked for both kinds of shares of "
                f"{sorted(survivors & dropped)}"
            )
        if not survivors | dropped <= set(st.u2):
            raise ProtocolError(f"client {self.client_id}: unmask request names clients outside U2")
        if len(survivors) < setup.threshold:
            raise InsufficientClientsError(Stage.UNMASK.value, len(survivors), setup.threshold)
        if self.client_id not in survivors:
            raise ProtocolError(
                f"client {self.client_id} sent its input but is not listed as a survivor"
            )
        b = {u: st.held_b[u] for u in survivors if u in st.held_b}
        s = {w: st.held_s[w] for w in dropped if w in st.held_s}
        st.stage = _DONE
        return UnmaskShares(self.client_id, b, s)


_DONE: Any = "done"  # terminal client stage (not a protocol stage)


# ------------------------------------------------------------------ server
class MaskingServer:
    """Server side of one masking round (a state machine driven by :meth:`step`).

    Raises :class:`~fl.errors.InsufficientClientsError` as soon as a stage
    leaves fewer than ``threshold`` clients (or a secret with fewer than
    ``threshold`` share holders), naming the stage.
    """

    def __init__(
        self,
        agg: MaskingAggregator,
        weights: Mapping[int, float],
        dim: int,
        *,
        round_id: bytes | None = None,
    ) -> None:
        self.agg = agg
        self.weights = dict(weights)
        self.participants = tuple(sorted(weights))
        n = len(self.participants)
        self.dim = dim
        self.round_id = round_id if round_id is not None else os.urandom(16)
        self.graph = neighbour_graph(self.participants, agg.neighbours, self.round_id)
        holders = min(len(nb) for nb in self.graph.values()) + 1
        self.threshold = agg.threshold if agg.threshold is not None else holders // 2 + 1
        if not 1 <= self.threshold <= holders:
            raise ConfigError(
                f"`threshold` must be in [1, {holders}] (clients holding each secret); "
                f"got {self.threshold}"
            )
        self.quantizer = Quantizer(agg.clip_range, n, agg.bits)
        self.stage: Stage | str = Stage.ADVERTISE_KEYS
        self.keys: dict[int, tuple[bytes, bytes]] = {}
        self.u2: tuple[int, ...] = ()
        self.u3: tuple[int, ...] = ()
        self.y: dict[int, np.ndarray] = {}
        self.upload: dict[int, int] = {c: 0 for c in self.participants}
        self.noise_std = 0.0
        self._result: AggregateResult | None = None

    def _client_noise_std(self) -> float:
        dp = self.agg.dp
        if dp is None or not dp.distributed:
            return 0.0
        return self.agg.average_noise_std(len(self.participants)) / math.sqrt(self.threshold)

    def _need(self, stage: Stage, alive: int) -> None:
        if alive < self.threshold:
            self.stage = "failed"
            raise InsufficientClientsError(stage.value, alive, self.threshold)

    def _accept(self, replies: Mapping[int, Any], kind: type, expected: set[int]) -> dict[int, Any]:
        for cid, r in replies.items():
            if cid not in expected or not isinstance(r, kind):
                raise ProtocolError(
                    f"unexpected {type(r).__name__} from client {cid} at stage {self.stage}"
                )
            self.upload[cid] += int(getattr(r, "nbytes")())  # noqa: B009 - checked type above
        return dict(replies)

    def first(self) -> dict[int, Any]:
        """Stage 0 messages: round setup for every participant."""
        noise = self._client_noise_std()
        return {
            c: MaskingSetup(
                round_id=self.round_id,
                participants=self.participants,
                neighbours=self.graph[c],
                threshold=self.threshold,
                weight=self.weights[c],
                dim=self.dim,
                clip_range=self.agg.clip_range,
                noise_std=noise,
                bits=self.agg.bits,
            )
            for c in self.participants
        }

    def step(self, replies: Mapping[int, Any]) -> dict[int, Any] | None:
        """Consume one stage's replies; return the next stage's messages (None when done)."""
        if self.stage is Stage.ADVERTISE_KEYS:
            got = self._accept(replies, AdvertiseKeys, set(self.participants))
            self._need(Stage.ADVERTISE_KEYS, len(got))
            self.keys = {c: (r.c_pk, r.s_pk) for c, r in got.items()}
            self.stage = Stage.SHARE_KEYS
            return {
                c: KeyRoster({v: self.keys[v] for v in (*self.graph[c], c) if v in self.keys})
                for c in sorted(self.keys)
            }
        if self.stage is Stage.SHARE_KEYS:
            got = self._accept(replies, EncryptedShares, set(self.keys))
            self._need(Stage.SHARE_KEYS, len(got))
            self.u2 = tuple(sorted(got))
            inbox: dict[int, dict[int, bytes]] = {c: {} for c in self.u2}
            for u, r in got.items():
                for v, ct in r.ciphertexts.items():
                    if v in inbox:
                        inbox[v][u] = ct
            self.stage = Stage.INPUT
            return {c: ShareDelivery(self.u2, inbox[c]) for c in self.u2}
        if self.stage is Stage.INPUT:
            got = self._accept(replies, MaskedInput, set(self.u2))
            self._need(Stage.INPUT, len(got))
            self.y = {}
            for c, r in got.items():
                try:
                    self.y[c] = self.quantizer.unpack(r.y, self.dim)
                except QuantizationRangeError as exc:
                    raise ProtocolError(f"client {c}: masked input: {exc}") from exc
            self.u3 = tuple(sorted(got))
            dropped = tuple(c for c in self.u2 if c not in got)
            self.stage = Stage.UNMASK
            return {c: UnmaskRequest(self.u3, dropped) for c in self.u3}
        if self.stage is Stage.UNMASK:
            got = self._accept(replies, UnmaskShares, set(self.u3))
            self._need(Stage.UNMASK, len(got))
            self._finish(got)
            self.stage = "done"
            return None
        raise ProtocolError(f"server step() called at stage `{self.stage}`")

    def _gather(self, owner: int, replies: Mapping[int, UnmaskShares], kind: str) -> int:
        pts: dict[int, int] = {}
        for holder, r in replies.items():
            table = r.b_shares if kind == "b" else r.s_shares
            if owner in table:
                pts[self.participants.index(holder) + 1] = table[owner]
        if len(pts) < self.threshold:
            self.stage = "failed"
            raise InsufficientClientsError(Stage.UNMASK.value, len(pts), self.threshold)
        return shamir.reconstruct(pts, self.threshold, self._lagrange)

    def _finish(self, replies: Mapping[int, UnmaskShares]) -> None:
        self._lagrange: dict[tuple[int, ...], Any] = {}
        total = np.zeros(self.dim, dtype=np.uint32)
        for y in self.y.values():
            total += y
        minus: list[bytes] = []  # masks to subtract: survivors' self masks, pair masks they added
        plus: list[bytes] = []  # pair masks that survivors subtracted
        for u in self.u3:
            seed = self._gather(u, replies, "b").to_bytes(32, "big")
            minus.append(_self_key(seed, self.round_id))
        live = set(self.u3)
        for w in self.u2:
            if w in live:
                continue
            raw = self._gather(w, replies, "s")
            sk = X25519PrivateKey.from_private_bytes(raw.to_bytes(32, "big"))
            for u in self.graph[w]:
                if u not in live:
                    continue
                key = _pair_key(sk, self.keys[u][1], self.round_id)
                # u added +mask for the pair (u, w) when u < w
                (minus if u < w else plus).append(key)
        (self.agg._scratch or _Masker()).apply(total, plus, minus)
        summed = self.quantizer.dequantize(total)
        noised = self.agg.dp is not None and self.agg.dp.distributed
        mean, std = self.agg.finalize(summed, self.u3, self.weights, noised=noised)
        if noised:
            std = self._client_noise_std() * math.sqrt(len(self.u3))
        self._result = AggregateResult(
            mean=mean,
            survivors=self.u3,
            dropped=tuple(c for c in self.participants if c not in live),
            upload_bytes={c: self.upload[c] for c in self.u3},
            noise_std=std,
        )

    def result(self) -> AggregateResult:
        """The aggregate (after the UNMASK stage)."""
        if self._result is None:
            raise ProtocolError("result() called before the round finished")
        return self._result


class MaskingAggregator(Aggregator):
    """Secure aggregation by pairwise masking; survives dropouts down to ``threshold``.

    See the module docstring for the protocol, its cost and its security.

    Range: each coordinate of each client's *weighted* contribution
    ``w_i * delta_i`` (after DP clipping and noise) must lie in
    ``[-clip_range, clip_range]``; it is quantized into ``Z_2^bits`` with
    resolution ``n * clip_range / 2^(bits-1)`` (:class:`~fl.clipping.Quantizer`).
    Anything outside is a :class:`~fl.errors.QuantizationRangeError` raised
    on the client, never a wrapped-around sum.

    Args:
        clip_range: Bound of each coordinate of a weighted update.
        threshold: Shamir threshold ``t`` (absolute); default: a majority of
            each client's share holders (``n//2 + 1`` with all pairs).
        neighbours: ``None`` for all pairs (default); an int ``k`` for the
            SecAgg+ ``k``-regular random ring (Bell et al. CCS 2020), which makes
            client and dropout cost ``O(k)`` instead of ``O(n)``.
        dp: Optional differential privacy; ``dp.distributed=True`` splits the
            noise among the clients.
        bits: Ring width, 16, 24 or 32 (default). Each client uploads ``bits/8``
            bytes per parameter; 24 bits cut the upload and the mask expansion
            by a quarter at a resolution 256 times coarser.
    """

    def __init__(
        self,
        *,
        clip_range: float = 1.0,
        threshold: int | None = None,
        neighbours: int | None = None,
        dp: DifferentialPrivacy | None = None,
        bits: int = 32,
    ) -> None:
        super().__init__(dp=dp)
        Quantizer(1.0, 1, bits)  # validates `bits`
        self.bits = bits
        if not (clip_range > 0 and math.isfinite(clip_range)):
            raise ConfigError(f"`clip_range` must be a positive finite number; got {clip_range}")
        if threshold is not None and threshold < 1:
            raise ConfigError(f"`threshold` must be >= 1; got {threshold}")
        if neighbours is not None and neighbours < 1:
            raise ConfigError(f"`neighbours` must be >= 1 or None (all pairs); got {neighbours}")
        self.clip_range = float(clip_range)
        self._scratch: _Masker | None = None
        self.threshold = threshold
        self.neighbours = neighbours

    def quantizer(self, n_clients: int) -> Quantizer:
        """The quantizer used for a round of ``n_clients`` selected clients."""
        return Quantizer(self.clip_range, n_clients, self.bits)

    def metrics_aggregator(self, *, value_bound: float) -> MaskingAggregator:
        """A copy without DP whose ``clip_range`` is at least ``value_bound`` (for count sums)."""
        out = super().metrics_aggregator(value_bound=value_bound)
        assert isinstance(out, MaskingAggregator)
        out.clip_range = max(self.clip_range, float(value_bound))
        return out

    def server_session(
        self, weights: Mapping[int, float], dim: int, *, round_index: int = 0
    ) -> MaskingServer:
        """Start the server side of one round (fresh random ``round_id``)."""
        return MaskingServer(self, weights, dim)

    def client_session(self, client_id: int, delta: torch.Tensor) -> MaskingClient:
        """Start the client side of one round."""
        gen = None
        if self.dp is not None and self.dp.distributed:
            gen = self.dp.generator(f"client/{client_id}")
        if self._scratch is None:
            self._scratch = _Masker()  # simulation: clients of one process share scratch
        return MaskingClient(
            client_id, delta, dp=self.dp, noise_generator=gen, scratch=self._scratch
        )


def upload_bytes_per_parameter(result: AggregateResult, dim: int) -> float:
    """Mean bytes uploaded per client per parameter in a round."""
    if not result.upload_bytes:
        return math.nan
    return sum(result.upload_bytes.values()) / len(result.upload_bytes) / dim

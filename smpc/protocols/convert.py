"""XOR shares: local helpers, bit-field openings, bit-to-arithmetic conversion (protocol layer).

XOR shares of bit-packed words: ``w = w_0 ^ w_1 ^ ... ^ w_{n-1}``. AND with a
public word and XOR of two shared words are local; XOR with a public word is
done by party 0 alone. The runtime only knows additive openings, so a binary
value is opened in a *bit-field layout*: each party first clears every bit of
its share except the meaningful ones, which sit at the bottom of fields at
least ``bit_length(world_size)`` bits wide; the additive sum of the shares then
holds, in each field, the *count* of parties whose bit is set, and the XOR is
the lowest bit of that count. This costs no extra round and no extra payload
as long as the meaningful bits are sparse enough, which is the case in the
comparison circuit (:mod:`smpc.protocols.compare`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ..comm.base import Communicator
from ..dealer.base import Component, Dealer, Kind
from ..sharing import xor_public

__all__ = [
    "xor_public",
    "field_width",
    "open_fields",
    "BitPair",
    "b2a",
]


def field_width(world_size: int) -> int:
    """Bits a field needs so that the sum of ``world_size`` bits never carries out of it."""
    return int(world_size).bit_length()


def open_fields(
    comm: Communicator,
    words: Sequence[torch.Tensor],
    masks: Sequence[int],
    group_bits: int,
    label: str,
    *,
    clean: bool = False,
) -> list[torch.Tensor]:
    """Open XOR-shared words whose meaningful bits are the set bits of ``masks``.

    The set bits of each mask are the bottoms of groups of ``group_bits`` bits.
    Several words are packed into one ring element per element when their
    fields fit side by side in a group (``group_bits // field_width`` words per
    element), so the payload is ``ceil(len(words) / per_word)`` ring elements.

    Args:
        comm: the runtime.
        words: XOR shares (this runtime's layout), each meaningful only at the
            set bits of its mask.
        masks: public positions of the meaningful bits; all words in one packed
            element must share the same mask.
        group_bits: distance between two meaningful positions (a power of two).
        label: op label for the stats.
        clean: the shares are already zero outside their mask (skip masking).

    Returns:
        The public words (meaningful bits only).

    Cost: 1 round; ``ceil(len(words) / (group_bits // bit_length(n)))`` ring
    elements per element sent to each other party.
    """
    w = field_width(comm.world_size)
    per = group_bits // w
    if per < 1:
        raise ValueError(
            f"cannot open bit fields of {group_bits} bits among {comm.world_size} parties"
        )
    packed: list[torch.Tensor] = []
    layout: list[list[tuple[int, int]]] = []  # (word index, shift) per packed element
    i = 0
    while i < len(words):
        chunk = list(range(i, min(i + per, len(words))))
        if any(masks[j] != masks[chunk[0]] for j in chunk):
            chunk = [i]
        first = words[chunk[0]]
        acc = first if clean else first & masks[chunk[0]]
        for k, j in enumerate(chunk[1:], start=1):
            part = words[j] if clean else words[j] & masks[j]
            acc = acc | (part << (k * w))
        packed.append(acc)
        layout.append([(j, k * w) for k, j in enumerate(chunk)])
        i += len(chunk)
    opened = comm.open(packed, label)
    out: list[torch.Tensor | None] = [None] * len(words)
    for value, items in zip(opened, layout, strict=True):
        for j, shift in items:
            out[j] = (value >> shift) & masks[j] if shift else value & masks[j]
    return [o for o in out if o is not None]


@dataclass(frozen=True, slots=True)
class BitPair:
    """A random bit shared twice: ``s_xor`` (bit 0 of a XOR-shared word) and ``s`` (additive)."""

    shape: tuple[int, ...]

    def components(self) -> tuple[Component, ...]:
        """Random components first, then derived ones."""
        return (
            Component("s_xor", Kind.RANDOM_XOR, self.shape),
            Component("s", Kind.DERIVED, self.shape),
        )

    def derive(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Plain derived values from the plain random ones."""
        return {"s": values["s_xor"] & 1}


def b2a(
    comm: Communicator, dealer: Dealer, bit: torch.Tensor, shape: tuple[int, ...]
) -> torch.Tensor:
    """Additive shares of a bit from XOR shares of it (bit 0 of each word).

    Protocol (dealer-assisted conversion with a doubly shared random bit, as in
    the daBits of Rotaru and Wood, INDOCRYPT 2019 [RW19]):
        1. The dealer gives a random bit ``s`` as XOR shares and as additive shares.
        2. Open ``e = b XOR s`` (bit-field opening).
        3. ``[b] = e + (1 - 2e) [s]`` (party 0 adds ``e``).

    Cost: 1 round; one ring element per element sent to each other party.
    Dealer: one random word from seeds, one correction share.
    Security: semi-honest; ``e`` is uniform because ``s`` is.
    """
    from ..sharing import add_public

    t = dealer.request(BitPair(shape))
    (e,) = open_fields(comm, [bit ^ t["s_xor"]], [1], 64, "b2a")
    return add_public(comm, t["s"] * (1 - 2 * e), e)

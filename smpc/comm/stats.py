"""Communication accounting: rounds and bytes per op label (runtime layer).

Every runtime records, for each communication round, the label of the
protocol that caused it and the payload bytes each party sent. The in-process
simulation records what the distributed runtime would put on the wire for the
same program; a test checks they agree. Message headers (shapes, tags) are not
counted; only tensor payloads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["OpStats", "Stats"]


@dataclass(slots=True)
class OpStats:
    """Counters for one op label."""

    rounds: int = 0
    bytes: int = 0
    calls: int = 0


@dataclass(slots=True)
class Stats:
    """Rounds and bytes sent, in total and per op label.

    Attributes:
        rounds: communication rounds between computing parties.
        bytes: payload bytes sent by the parties this process runs (all of them in
            simulation, this party in a distributed run).
        bytes_per_party: payload bytes sent by each party (index = rank); in a
            distributed run only this process's entry is known (others stay 0).
        dealer_bytes: bytes the crypto provider sent (correction shares and seeds).
        dealer_requests: number of correlated-randomness requests served.
        by_op: per op label.
    """

    world_size: int
    rounds: int = 0
    bytes: int = 0
    bytes_per_party: list[int] = field(default_factory=list)
    dealer_bytes: int = 0
    dealer_requests: int = 0
    by_op: dict[str, OpStats] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.bytes_per_party:
            self.bytes_per_party = [0] * self.world_size

    def record(self, label: str, sent: list[int] | dict[int, int], *, rounds: int = 1) -> None:
        """Record one communication step: ``sent[rank]`` bytes sent by each party."""
        op = self.by_op.get(label)
        if op is None:
            op = self.by_op[label] = OpStats()
        items = sent.items() if isinstance(sent, dict) else enumerate(sent)
        total = 0
        for rank, nbytes in items:
            self.bytes_per_party[rank] += nbytes
            total += nbytes
        self.rounds += rounds
        self.bytes += total
        op.rounds += rounds
        op.bytes += total
        op.calls += 1

    def record_dealer(self, nbytes: int) -> None:
        """Record one dealer request that sent ``nbytes`` to the parties."""
        self.dealer_bytes += nbytes
        self.dealer_requests += 1

    def reset(self) -> None:
        """Zero every counter."""
        self.rounds = self.bytes = self.dealer_bytes = self.dealer_requests = 0
        self.bytes_per_party = [0] * self.world_size
        self.by_op.clear()

    def snapshot(self) -> Stats:
        """A copy of the current counters."""
        return Stats(
            world_size=self.world_size,
            rounds=self.rounds,
            bytes=self.bytes,
            bytes_per_party=list(self.bytes_per_party),
            dealer_bytes=self.dealer_bytes,
            dealer_requests=self.dealer_requests,
            by_op={k: OpStats(v.rounds, v.bytes, v.calls) for k, v in self.by_op.items()},
        )

    def __sub__(self, other: Stats) -> Stats:
        out = self.snapshot()
        out.rounds -= other.rounds
        out.bytes -= other.bytes
        pairs = zip(out.bytes_per_party, other.bytes_per_party, strict=True)
        out.bytes_per_party = [a - b for a, b in pairs]
        out.dealer_bytes -= other.dealer_bytes
        out.dealer_requests -= other.dealer_requests
        for k, v in other.by_op.items():
            o = out.by_op.setdefault(k, OpStats())
            o.rounds -= v.rounds
            o.bytes -= v.bytes
            o.calls -= v.calls
        out.by_op = {k: v for k, v in out.by_op.items() if v.calls or v.bytes or v.rounds}
        return out

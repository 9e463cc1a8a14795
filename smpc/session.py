"""Session: a fixed set of computing parties plus a crypto provider (session layer).

A session owns the runtime's communicator, the dealer, a local CSPRNG for
input shares and the fixed-point format. Several sessions can coexist; each
:class:`~smpc.tensor.SharedTensor` points to its own, and mixing two raises
:class:`~smpc.errors.SessionMismatchError`. Nothing is global.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import StrEnum
from types import TracebackType
from typing import TYPE_CHECKING

import torch

from .comm.base import Communicator
from .comm.local import LocalCommunicator
from .comm.stats import Stats
from .dealer.base import Dealer
from .dealer.local import LocalDealer
from .encoding import FixedPoint, as_plain_tensor, plain_dtype
from .errors import SessionClosedError
from .perf import ThreadPolicy, adaptive_policy
from .prg import AesPrg, key_from_seed
from .sharing import additive_shares

if TYPE_CHECKING:
    from .tensor import SharedTensor

__all__ = ["Session", "Truncation"]

# Plaintext dtypes a share announces to the other parties (by index, in the
# share message's header): what ``reveal()`` returns by default.
_DTYPE_CODES = (torch.float32, torch.float64, torch.int64, torch.float16, torch.bfloat16)


class Truncation(StrEnum):
    """How products are rescaled.

    ``PROBABILISTIC`` (default): the one-round dealer-assisted protocol, any
    number of parties, error at most one ulp. ``LOCAL``: SecureML local
    truncation, two parties only, 0 rounds, rare large errors (opt-in).
    """

    PROBABILISTIC = "probabilistic"
    LOCAL = "local"


class Session:
    """A secure-computation session.

    Args:
        parties: number of computing parties (>= 2) or a sequence of distinct names.
        frac_bits: fractional bits of the fixed-point encoding (default 16).
        seed: TESTING SWITCH. ``None`` (default) keys every generator from
            ``os.urandom``. An int/bytes/str makes shares, masks and dealer
            material reproducible: never use it with real data.
        timeout: seconds to wait for a peer before raising (distributed runtime);
            a finite positive number.
        truncation: :class:`Truncation` mode (default probabilistic).
        comm: a runtime to use instead of the in-process simulation (injected
            by :func:`smpc.run` and the launcher).
        dealer: a crypto provider to use instead of the in-process one.
        chunk_size: in simulation, elementwise and comparison ops on more elements
            than this run in chunks of this many elements (bounded memory, same
            results, rounds and bytes as one op; see ``docs/costs.md``), rounded
            down to a multiple of 64 (at least 64). Default ``None``:
            ``2^20 // parties`` elements (about 150 MB of working memory per chunk
            for a ReLU, whatever the party count).
        threads: intra-op thread policy of this session's ops. ``"adaptive"``
            (default): torch's thread count while the machine is idle, one
            thread less per core that other processes keep busy (sampled from
            ``/proc`` every 0.1 s; see :func:`smpc.perf.thread_policy`); the
            count is restored when the session closes. ``"torch"``: leave
            torch's setting alone.

    Example:
        >>> with Session(parties=("alice", "bob")) as sess:
        ...     x = sess.share(torch.tensor([1.5, -2.0]))
        ...     (x * x).reveal()
        tensor([2.2500, 4.0000])
    """

    def __init__(
        self,
        parties: int | Sequence[str] = 2,
        frac_bits: int = 16,
        *,
        seed: int | bytes | str | None = None,
        timeout: float = 60.0,
        truncation: Truncation | str = Truncation.PROBABILISTIC,
        comm: Communicator | None = None,
        dealer: Dealer | None = None,
        chunk_size: int | None = None,
        threads: str = "adaptive",
    ) -> None:
        if threads not in ("adaptive", "torch"):
            raise ValueError(f"`threads` must be 'adaptive' or 'torch'; got {threads!r}")
        if chunk_size is not None and (
            isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
        ):
            raise ValueError(
                f"`chunk_size` must be a positive int (elements) or None; got {chunk_size!r}"
            )
        if (
            isinstance(parties, bool)
            or not isinstance(parties, (int, Sequence))
            or isinstance(parties, (str, bytes))
        ):
            raise TypeError(
                f"`parties` must be an int or a sequence of names; got {type(parties).__name__}"
            )
        if isinstance(parties, int):
            names = tuple(f"party{i}" for i in range(parties))
        else:
            names = tuple(str(p) for p in parties)
            if len(set(names)) != len(names):
                raise ValueError(f"`parties` names must be distinct; got {names}")
        if len(names) < 2:
            raise ValueError(f"`parties` must name at least 2 parties; got {len(names)}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError(
                f"`timeout` must be a finite positive number of seconds; got {timeout!r} "
                f"({type(timeout).__name__})"
            )
        if not math.isfinite(timeout) or timeout <= 0:
            raise ValueError(
                f"`timeout` must be a finite positive number of seconds; got {timeout}"
            )
        if seed is not None:
            key_from_seed(seed)  # validates the testing switch before anything is built
        self.parties: tuple[str, ...] = names
        self.encoding = FixedPoint(frac_bits)
        self.truncation = Truncation(truncation)
        if self.truncation is Truncation.LOCAL and len(names) != 2:
            raise ValueError(
                f"`truncation='local'` needs exactly 2 parties; got {len(names)} "
                "(use the default probabilistic truncation)"
            )
        self.seed = seed
        cs = (1 << 20) // len(names) if chunk_size is None else chunk_size
        # whole words of bit-packed openings per chunk: bytes equal the unchunked op's
        self.chunk_size: int = max(64, cs - cs % 64)
        self._threads_at_start = torch.get_num_threads()
        self.thread_policy: ThreadPolicy | None = (
            adaptive_policy(self._threads_at_start) if threads == "adaptive" else None
        )
        self.comm: Communicator = (
            comm if comm is not None else LocalCommunicator(len(names), timeout=timeout)
        )
        if self.comm.world_size != len(names):
            raise ValueError(
                f"`comm.world_size` must equal the number of parties {len(names)}; "
                f"got {self.comm.world_size}"
            )
        rank = self.comm.rank
        local_key = None if seed is None else key_from_seed(seed, label=f"local/{rank}")
        self.prg = AesPrg(local_key)
        if dealer is None:
            dealer_key = None if seed is None else key_from_seed(seed, label="dealer")
            dealer = LocalDealer(len(names), self.comm.stats, key=dealer_key)
        self.dealer: Dealer = dealer
        self._closed = False
        self._mask_keys = 0  # names of provider-kept masks, allocated in program order
        # Names of transient mask pairs (a forward's, until its backward): negative, reused
        # once released, so that a training loop's requests repeat step after step.
        self._transient_keys = 0
        self._free_transient: list[int] = []

    def new_mask_key(self) -> int:
        """A fresh name for a mask the provider keeps (same sequence on every party)."""
        self._mask_keys += 1
        return self._mask_keys

    def transient_mask_key(self) -> int:
        """A name ``k`` for a pair of masks (``k``, ``k + 1``) kept until a backward uses them.

        Names released by :meth:`release_mask_key` are reused, last released
        first: a loop of forward and backward passes then asks the provider for
        the same requests at every step (which its speculation relies on).
        """
        if self._free_transient:
            return self._free_transient.pop()
        self._transient_keys -= 2
        return self._transient_keys

    def release_mask_key(self, key: int) -> None:
        """Return a :meth:`transient_mask_key` name after the provider released its masks."""
        self._free_transient.append(key)

    # ----------------------------------------------------------------- identity
    @property
    def world_size(self) -> int:
        """Number of computing parties."""
        return len(self.parties)

    @property
    def rank(self) -> int | None:
        """This process's party index, or ``None`` when all parties are simulated here."""
        return self.comm.rank

    @property
    def simulated(self) -> bool:
        """Whether every party runs in this process."""
        return self.comm.party_axis

    @property
    def stats(self) -> Stats:
        """Rounds and bytes sent so far, in total and per op kind."""
        return self.comm.stats

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def party_index(self, party: int | str | None, *, name: str = "src") -> int:
        """Resolve a party given by index or name."""
        if party is None:
            return 0
        if isinstance(party, str):
            if party not in self.parties:
                raise ValueError(f"`{name}` must be one of {self.parties}; got {party!r}")
            return self.parties.index(party)
        if isinstance(party, bool) or not isinstance(party, int):
            raise TypeError(f"`{name}` must be a party name or index; got {type(party).__name__}")
        if not 0 <= party < self.world_size:
            raise ValueError(f"`{name}` must be in [0, {self.world_size}); got {party}")
        return party

    def check_open(self) -> None:
        """Raise :class:`SessionClosedError` if the session was closed."""
        if self._closed:
            raise SessionClosedError("this session is closed; its shared tensors cannot be used")

    # ----------------------------------------------------------------- sharing
    def share(
        self,
        tensor: torch.Tensor | float | int | Sequence[float] | None,
        src: int | str | None = None,
        *,
        requires_grad: bool = False,
    ) -> SharedTensor:
        """Secret-share a tensor owned by party ``src`` among all parties.

        Args:
            tensor: float, int or bool values (a tensor, a number, a nested
                sequence of numbers or a numpy array); encoded in fixed point. In
                a distributed run only party ``src`` needs to pass it (others may
                pass ``None``). A torch ``Dataset`` or ``DataLoader`` is refused:
                share its tensors (``dataset.tensors[0]``) or each batch.
            src: owner of the input (name or index; default: the first party).
            requires_grad: record operations on the result for :meth:`backward`.

        Returns:
            A :class:`~smpc.tensor.SharedTensor` whose ``reveal()`` returns the
            dtype shared: a float tensor keeps its dtype (Python floats and lists
            are torch's default float32, numpy arrays usually float64); integer
            and bool inputs reveal as int64. In a distributed run the dtype
            travels in the share message's header (no payload bytes, no round).

        Raises:
            EncodingOverflowError: NaN/inf or values beyond the fixed-point range
                (integers beyond 64 bits included).
            TypeError: ``tensor`` is not numeric data (e.g. a ``Dataset``).

        Cost: 1 round; ``src`` sends one share to each other party.
        """
        from .tensor import SharedTensor

        self.check_open()
        src_i = self.party_index(src, name="src")
        me = self.comm.rank
        if me is None or me == src_i:
            if tensor is None:
                raise ValueError("`tensor` must be given by the party that owns it; got None")
            if isinstance(tensor, SharedTensor):
                raise TypeError("`tensor` is already shared; use it directly")
            plain = as_plain_tensor(tensor, name="tensor")
            dtype: torch.dtype | None = plain_dtype(plain)
            enc = self.encoding.encode(plain.detach().cpu(), name="tensor")
            stacked = additive_shares(enc, self.world_size, self.prg)
            share = self.comm.share_from(
                stacked, src_i, tuple(enc.shape), "share", meta=_DTYPE_CODES.index(dtype)
            )
        else:
            share = self.comm.share_from(None, src_i, None, "share")
            code = self.comm.received_meta
            dtype = (
                _DTYPE_CODES[code] if code is not None and 0 <= code < len(_DTYPE_CODES) else None
            )
        return SharedTensor(share, self, requires_grad=requires_grad, dtype=dtype)

    def from_shares(self, share: torch.Tensor, *, requires_grad: bool = False) -> SharedTensor:
        """Wrap raw ring shares (this runtime's layout) as a SharedTensor."""
        from .tensor import SharedTensor

        self.check_open()
        return SharedTensor(share, self, requires_grad=requires_grad)

    # ----------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Close the runtime and the dealer; shared tensors become unusable."""
        if not self._closed:
            self._closed = True
            if self.thread_policy is not None:
                torch.set_num_threads(self._threads_at_start)
            self.dealer.close()
            self.comm.close()
            self.prg.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "simulated" if self.simulated else f"rank {self.rank}"
        return (
            f"Session(parties={self.parties}, frac_bits={self.encoding.frac_bits}, {mode}"
            f"{', closed' if self._closed else ''})"
        )

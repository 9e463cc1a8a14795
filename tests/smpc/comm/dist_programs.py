"""Party programs for tests/smpc/test_distributed.py (run in party processes).

They live apart from the test module so that each party process imports only
torch and smpc (not pytest or hypothesis) and starts fast. Each is a
module-level function of a session, so :func:`smpc.launch.run` can pickle it,
and runtime-agnostic, so the same function also runs in a simulated session.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import torch

import smpc
from smpc.errors import PartyTimeoutError
from smpc.protocols import beaver, truncation
from smpc.protocols.beaver import MulTriple
from smpc.sharing import additive_shares

FRAC = 16


def _share(sess: smpc.Session, plain: torch.Tensor | None, src: int) -> torch.Tensor:
    """Raw shares of int64 ``plain`` owned by ``src``, in this runtime's layout."""
    comm = sess.comm
    if comm.rank is None or comm.rank == src:
        assert plain is not None
        stacked = additive_shares(plain, comm.world_size, sess.prg)
        return comm.share_from(stacked, src, tuple(plain.shape), "input")
    return comm.share_from(None, src, None, "input")


def _open(sess: smpc.Session, share: torch.Tensor) -> torch.Tensor:
    (out,) = sess.comm.open([share], "check")
    return out


@dataclass(frozen=True)
class Case:
    """Ring inputs of one protocol check (drawn in the main process)."""

    x: torch.Tensor  # fixed-point encoded, |x| < 2^31
    y: torch.Tensor  # same shape as x (or broadcastable, same ndim)
    a: torch.Tensor  # (..., m, k)
    b: torch.Tensor  # (..., k, p)


def protocol_program(sess: smpc.Session, case: Case) -> dict[str, Any]:
    """Share, open, reveal to one party, mul, matmul, truncation; runtime-agnostic."""
    comm, dealer = sess.comm, sess.dealer
    last = comm.world_size - 1
    x = _share(sess, case.x if comm.rank in (None, 0) else None, 0)
    y = _share(sess, case.y if comm.rank in (None, last) else None, last)
    a = _share(sess, case.a if comm.rank in (None, 0) else None, 0)
    b = _share(sess, case.b if comm.rank in (None, 1) else None, 1)
    out: dict[str, Any] = {"x": _open(sess, x)}
    before = sess.stats.snapshot()
    out["reveal_to"] = comm.reveal_to(y, last, "reveal_to")
    out["reveal_to_stats"] = sess.stats - before
    xy = beaver.mul(comm, dealer, x, y)
    out["mul"] = _open(sess, xy)
    out["trunc"] = _open(sess, truncation.trunc(comm, dealer, xy, FRAC))
    out["matmul"] = _open(sess, beaver.matmul(comm, dealer, a, b))
    out["square"] = _open(sess, beaver.square(comm, dealer, x))
    out["stats"] = sess.stats.snapshot()
    # the correction bytes the provider sent (distributed: received by this party;
    # simulation: what a provider sends for the same requests, pools drawn whole)
    out["dealer_received"] = getattr(dealer, "received_bytes", getattr(dealer, "sent_bytes", None))
    return out


def tensor_program(sess: smpc.Session, xp: torch.Tensor, wp: torch.Tensor) -> dict[str, Any]:
    """The SharedTensor API: the same code as a simulated session."""
    last = sess.world_size - 1
    x = sess.share(xp if sess.rank in (None, 0) else None, src=0)
    w = sess.share(wp if sess.rank in (None, last) else None, src=last)
    return {
        "mul": (x * x + 3).reveal(),
        "matmul": (x @ w).reveal(),
        "to_last": (x - 1).reveal(to=last),
        # multi-round comparison: XOR-shared dealer material
        "gt": (x > 1).reveal(),
        "relu": x.relu().reveal(),
        # all-pairs max: one comparison, then a dealer one-hot table lookup
        "max": x.max(dim=-1)[0].reveal(),
        "argmax": x.argmax(dim=-1).reveal(),
        "stats": sess.stats.snapshot(),
    }


def dies_program(sess: smpc.Session) -> tuple[str, float]:
    """Party 1 dies after one opening; the others time how long until they raise."""
    share = torch.zeros(4, dtype=torch.int64)
    sess.comm.open([share], "warmup")
    if sess.rank == 1:
        os._exit(3)
    start = time.monotonic()
    try:
        for _ in range(3):
            sess.comm.open([share], "after")
    except PartyTimeoutError:
        return "timeout", time.monotonic() - start
    return "no error", time.monotonic() - start


def stalls_program(sess: smpc.Session, stall: float) -> tuple[str, float]:
    """Party 1 stops answering for ``stall`` seconds (alive, connection open)."""
    share = torch.zeros(4, dtype=torch.int64)
    sess.comm.open([share], "warmup")
    if sess.rank == 1:
        time.sleep(stall)
        return "stalled", stall
    start = time.monotonic()
    try:
        sess.comm.open([share], "after")
    except PartyTimeoutError:
        return "timeout", time.monotonic() - start
    return "no error", time.monotonic() - start


def desync_shape_program(sess: smpc.Session) -> None:
    """Parties open tensors of different shapes."""
    assert sess.rank is not None
    sess.comm.open([torch.zeros(3 + sess.rank, dtype=torch.int64)], "mismatch")


def desync_op_program(sess: smpc.Session) -> None:
    """Party 0 waits at a barrier while the others open."""
    if sess.rank == 0:
        sess.comm.barrier()
    else:
        sess.comm.open([torch.zeros(3, dtype=torch.int64)], "open")


def raises_program(sess: smpc.Session) -> int:
    """The last party raises; the others are blocked in an opening."""
    if sess.rank == sess.world_size - 1:
        raise ValueError("boom in the last party")
    sess.comm.open([torch.zeros(2, dtype=torch.int64)], "blocked")
    return 0


def seeded_program(sess: smpc.Session) -> torch.Tensor:
    """A masked opening: reproducible under the testing seed only."""
    comm, dealer = sess.comm, sess.dealer
    x = _share(sess, torch.arange(5) if comm.rank == 0 else None, 0)
    t = dealer.request(MulTriple((5,), (5,)))
    return _open(sess, x - t["a"])


def object_program(sess: smpc.Session) -> object:
    """broadcast_object and barrier."""
    obj = {"rank": sess.rank, "data": [1, 2, 3]} if sess.rank == 1 else None
    got = sess.comm.broadcast_object(obj, 1, "meta")
    sess.comm.barrier()
    return got


def big_open_program(sess: smpc.Session, values: list[torch.Tensor]) -> dict[str, Any]:
    """Openings of every size class: inline, large in parts, large concatenated, empty."""
    comm = sess.comm
    n = comm.world_size
    shares = [_share(sess, v if comm.rank in (None, 0) else None, 0) for v in values]
    before = sess.stats.snapshot()
    big = [s for s, v in zip(shares, values, strict=True) if v.numel() > 600]
    out = {
        "all": comm.open(shares, "many"),  # > MAX_PARTS shares beyond a frame: concatenated
        "big": comm.open(big, "big"),  # few shares beyond a frame: zero-copy parts
        "medium": comm.open([big[-1], shares[0]], "medium"),  # several shares in one frame
        "small": comm.open(shares[:2], "small"),  # inline in the frame
        "empty": comm.open([], "empty"),
        "mul": _open(sess, beaver.mul(comm, sess.dealer, big[0], big[0])),
    }
    out["stats"] = sess.stats - before
    out["n"] = n
    return out


def inline_open_program(sess: smpc.Session) -> dict[str, Any]:
    """Frame-sized openings of every integer dtype and layout, plain and masked:
    party ``i`` holds ``(i + 1) * base`` (so the sums are known)."""
    comm = sess.comm
    k = (comm.rank or 0) + 1
    base = torch.arange(-6, 6, dtype=torch.int64).reshape(3, 4) * (2**61 + 12345)
    shares = [
        k * base,  # wraps around 2^64
        (k * base).t(),  # a non-contiguous view
        torch.tensor(7 * k),  # 0-d
        (torch.arange(10, dtype=torch.uint8) * 51 * k),  # bytes: sums wrap mod 256
        torch.arange(5, dtype=torch.int32) * k,
        torch.empty(0, dtype=torch.int64),
    ]
    masks = [k * torch.ones_like(x) for x in shares]
    return {
        "open": comm.open(shares, "inline"),
        "masked": comm.open_masked(list(zip(shares, masks, strict=True)), "inline"),
        "mixed": comm.open_masked([(shares[0], masks[0].t().contiguous().t())], "mixed"),
    }


def desync_parts_program(sess: smpc.Session) -> None:
    """Openings with the same total size but the parts' sizes swapped."""
    sizes = (600, 700) if sess.rank == 0 else (700, 600)  # inside one frame
    sess.comm.open([torch.zeros(k, dtype=torch.int64) for k in sizes], "swapped")


def desync_big_parts_program(sess: smpc.Session) -> None:
    """Openings beyond a frame with the same total size but the parts' sizes swapped."""
    sizes = (60_000, 90_000) if sess.rank == 0 else (90_000, 60_000)
    sess.comm.open([torch.zeros(k, dtype=torch.int64) for k in sizes], "swapped")


def desync_many_parts_program(sess: smpc.Session) -> None:
    """Concatenated openings (many parts, beyond a frame) with two parts' sizes swapped."""
    sizes = [20_000] * 10 + ([1, 2] if sess.rank == 0 else [2, 1])
    sess.comm.open([torch.zeros(k, dtype=torch.int64) for k in sizes], "swapped")


def kept_inference_program(
    sess: smpc.Session, state: dict[str, torch.Tensor], batches: list[torch.Tensor]
) -> dict[str, Any]:
    """An encrypted Linear-ReLU-Linear in eval mode: weights masked once, batches after."""
    import smpc.nn as snn

    plain = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    plain.load_state_dict(state)
    enc = snn.encrypt(plain, sess, src=0).eval()
    last = sess.world_size - 1
    outs, costs = [], []
    with smpc.no_grad():
        for xb in batches:
            before = sess.stats.snapshot()
            x = sess.share(xb if sess.rank in (None, last) else None, src=last)
            outs.append(enc(x).reveal())
            costs.append(sess.stats - before)
    return {"out": outs, "bytes": [c.bytes for c in costs], "stats": sess.stats}


def many_rows_program(sess: smpc.Session, xp: torch.Tensor, wp: torch.Tensor) -> torch.Tensor:
    """A shared-by-shared matmul with more than 16 rows (the fused local step)."""
    last = sess.world_size - 1
    x = sess.share(xp if sess.rank in (None, 0) else None, src=0)
    w = sess.share(wp if sess.rank in (None, last) else None, src=last)
    out = (x @ w).reveal()
    assert out is not None
    return out


def backward_program(sess: smpc.Session, inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Gradients of a linear layer and a strided convolution (products sharing rounds,
    the transposed-convolution triple); runtime-agnostic."""
    from smpc import functional as F

    last = sess.world_size - 1
    shared = {
        name: sess.share(
            v if sess.rank in (None, i % sess.world_size) else None,
            src=i % sess.world_size,
            requires_grad=name in ("x", "w", "cx", "cw"),
        )
        for i, (name, v) in enumerate(inputs.items())
    }
    before = sess.stats.snapshot()
    F.linear(shared["x"], shared["w"]).backward(shared["g"])
    F.conv2d(shared["cx"], shared["cw"], stride=2, padding=1).backward(shared["cg"])
    cost = sess.stats - before
    grads = {}
    for name in ("x", "w", "cx", "cw"):
        grad = shared[name].grad
        assert grad is not None
        grads[name] = grad.reveal(to=last)
    return {"grads": grads, "stats": cost}


def scheduling_policy(sess: smpc.Session) -> int:
    """This party process's scheduling policy (tests/smpc/test_perf.py)."""
    return os.sched_getscheduler(0)


def grouped_conv_program(sess: smpc.Session, inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
    """A depthwise and a grouped convolution with their gradients (the provider
    builds convolution triples with ``groups`` from the request); runtime-agnostic."""
    from smpc import functional as F

    last = sess.world_size - 1
    shared = {
        name: sess.share(
            v if sess.rank in (None, i % sess.world_size) else None,
            src=i % sess.world_size,
            requires_grad=name in ("x", "w", "w2"),
        )
        for i, (name, v) in enumerate(inputs.items())
    }
    before = sess.stats.snapshot()
    h = F.conv2d(shared["x"], shared["w"], padding=1, groups=4)  # depthwise
    out = F.conv2d(h, shared["w2"], stride=2, groups=2)  # grouped
    out.backward(shared["g"])
    cost = sess.stats - before
    grads = {}
    for name in ("x", "w", "w2"):
        grad = shared[name].grad
        assert grad is not None
        grads[name] = grad.reveal(to=last)
    return {"out": out.reveal(to=last), "grads": grads, "stats": cost}


def adam_program(
    sess: smpc.Session,
    state: dict[str, torch.Tensor],
    data: list[tuple[torch.Tensor, torch.Tensor]],
) -> dict[str, Any]:
    """Train an encrypted Linear-ReLU-Linear with Adam (weights from party 0, data
    from the last party); every party gets the decrypted weights."""
    import smpc.nn as snn
    import smpc.optim

    plain = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    plain.load_state_dict(state)
    enc = snn.encrypt(plain, sess, src=0)
    opt = smpc.optim.Adam(enc.parameters(), lr=0.01, weight_decay=0.001)
    last = sess.world_size - 1
    mine = sess.rank in (None, last)
    for x, y in data:
        opt.zero_grad()
        xs = sess.share(x if mine else None, src=last)
        ys = sess.share(y if mine else None, src=last)
        snn.MSELoss()(enc(xs), ys).backward()
        opt.step()
    return {"state": enc.decrypt().state_dict(), "stats": sess.stats}


def wide_grad_program(sess: smpc.Session, inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Two linear weights that keep their gradients wide (as for an optimizer), then
    ``materialize_grads`` truncates both in one round; runtime-agnostic."""
    from smpc import functional as F
    from smpc.autograd.tape import materialize_grads

    last = sess.world_size - 1
    shared = {
        name: sess.share(
            v if sess.rank in (None, i % sess.world_size) else None,
            src=i % sess.world_size,
            requires_grad=name in ("w1", "w2"),
        )
        for i, (name, v) in enumerate(inputs.items())
    }
    w1, w2 = shared["w1"], shared["w2"]
    w1.keep_wide_grad = w2.keep_wide_grad = True
    F.linear(F.linear(shared["x"], w1), w2).backward(shared["g"])
    pending = [w.wide_grad is not None for w in (w1, w2)]
    before = sess.stats.snapshot()
    materialize_grads([w1, w2])
    cost = sess.stats - before
    grads = {}
    for name, w in (("w1", w1), ("w2", w2)):
        grad = w.grad
        assert grad is not None
        grads[name] = grad.reveal(to=last)
    return {"pending": pending, "grads": grads, "stats": cost}


def dtype_program(sess: smpc.Session) -> dict[str, Any]:
    """Shares of several dtypes from different owners; what reveal() returns (dtype, value)."""
    mine = sess.rank in (None, 0)
    x = sess.share(torch.tensor([4916.2243576, -1.5], dtype=torch.float64) if mine else None, 0)
    i = sess.share(torch.tensor([3, -4]) if sess.rank in (None, 1) else None, 1)
    f = sess.share([0.5, 2.0] if mine else None, 0)
    out = {"x": x, "i": i, "f": f, "xi": x * i, "ii": i * i, "fi": f + i, "cmp": i > 0}
    res: dict[str, Any] = {k: v.reveal() for k, v in out.items()}
    res["x32"] = x.reveal(dtype=torch.float32)
    return res

"""An eavesdropper on every link of a TLS run sees TLS 1.3 records and none of the secrets.

A relay in this process sits between every pair of roles (alice, bob, the crypto
provider): each role's TLS dials go to the relay, which forwards them to the
real listener and records every byte both ways. The roles are separate
processes running :func:`smpc.launch.run_party` / :func:`~smpc.launch.run_dealer`
over ``transport="tls"``; each also records, just before encryption, every
plaintext message it sends (shares, masked openings, the dealer's keys and
corrections, reveals). The recording must hold TLS 1.3 (a ServerHello naming
version 0x0304, then only encrypted application records) and none of those
plaintexts, none of the dealer's keys and none of the revealed values.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import queue
import random
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

import smpc
from smpc.credentials import create_ca, issue, role_uri
from smpc.dealer.trusted import dealer_key

pytestmark = pytest.mark.distributed

NAMES = ("alice", "bob")
SEED = "eavesdropper-test"
SECRET_X = torch.tensor([3.25, -1.5, 7.0, 0.125, 42.0, -8.5, 1.0, 2.0])
SECRET_Y = torch.tensor([2.0, 4.5, -3.0, 0.5, -1.0, 8.0, 1.5, -2.5])


def program(sess: smpc.Session) -> dict[str, torch.Tensor | None]:
    """Share, products, comparison, reveal: every kind of traffic."""
    x = sess.share(SECRET_X if sess.rank == 0 else None, src="alice")
    y = sess.share(SECRET_Y if sess.rank == 1 else None, src="bob")
    z = x * y
    mm = x.reshape(2, 4) @ y.reshape(4, 2)
    c = x > y
    return {"z": z.reveal(), "mm": mm.reveal(), "c": c.reveal(), "relu": (x - y).relu().reveal()}


# ----------------------------------------------------------------- the roles' processes
def _role(
    rank: int, store_path: str, creds: str, relay_port: int, out: Any
) -> None:  # pragma: no cover - runs in a child process
    from torch._C._distributed_c10d import FileStore

    from smpc.comm.tls import TlsSocketGroup
    from smpc.launch import run_dealer, run_party

    original = socket.create_connection

    def via_relay(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
        s = original(("127.0.0.1", relay_port), *args, **kwargs)
        s.sendall(f"{address[0]}|{address[1]}\n".encode())
        return s

    socket.create_connection = via_relay
    sent: list[bytes] = []
    send = TlsSocketGroup.send

    def recording_send(
        self: TlsSocketGroup, tensors: list[torch.Tensor], dst: int, tag: int
    ) -> Any:
        sent.append(tensors[0].contiguous().view(torch.uint8).numpy().tobytes())
        return send(self, tensors, dst, tag)

    TlsSocketGroup.send = recording_send  # type: ignore[method-assign,assignment]
    store = FileStore(store_path, -1)
    try:
        if rank < len(NAMES):
            result: Any = run_party(
                program, rank, NAMES, seed=SEED, timeout=60, transport="tls",
                credentials=creds, store=store,
            )  # fmt: skip
        else:
            run_dealer(
                NAMES, seed=SEED, timeout=60, transport="tls", credentials=creds, store=store
            )
            result = None
        if result is not None:  # plain lists: tensors on a queue would be shared by fd
            result = {k: v.tolist() for k, v in result.items()}
        out.put((rank, "ok", result, sent))
    except BaseException as e:
        out.put((rank, "err", repr(e), sent))


# ----------------------------------------------------------------- the relay
class Relay:
    """Forwards each connection to the address its first line names; records every byte."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.streams: list[tuple[str, bytearray, bytearray]] = []  # target, dialer->, <-acceptor
        self.lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                a, _ = self.listener.accept()
            except OSError:
                return
            line = b""
            while not line.endswith(b"\n"):
                line += a.recv(1)
            host, port = line.decode().strip().rsplit("|", 1)
            b = socket.create_connection((host, int(port)))
            up, down = bytearray(), bytearray()
            with self.lock:
                self.streams.append((f"{host}:{port}", up, down))
            for src, dst, rec in ((a, b, up), (b, a, down)):
                threading.Thread(target=self._pipe, args=(src, dst, rec), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, rec: bytearray) -> None:
        try:
            while data := src.recv(1 << 16):
                rec += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_WR if s is dst else socket.SHUT_RD)

    def close(self) -> None:
        self.listener.close()


def _records(stream: bytes) -> list[tuple[int, int]]:
    """The TLS records of one direction: ``(content type, legacy version)``."""
    out, off = [], 0
    while off + 5 <= len(stream):
        kind, version, length = stream[off], int.from_bytes(stream[off + 1 : off + 3]), 0
        length = int.from_bytes(stream[off + 3 : off + 5])
        out.append((kind, version))
        off += 5 + length
    assert off == len(stream), "the recording ends inside a TLS record"
    return out


def _windows(blob: bytes, rng: random.Random, k: int = 6, width: int = 16) -> list[bytes]:
    """Up to ``k`` high-entropy ``width``-byte pieces of a plaintext (heads and zeros skipped)."""
    out: list[bytes] = []
    for _ in range(8 * k):
        if len(blob) < width or len(out) == k:
            break
        off = rng.randrange(0, len(blob) - width + 1)
        piece = blob[off : off + width]
        if len(set(piece)) >= 12:
            out.append(piece)
    return out


@pytest.mark.timeout(180)
def test_a_relay_on_every_link_sees_only_tls13_records(tmp_path: Path) -> None:
    # Prepare: credentials, a relay, and the three roles in processes of their own
    creds = tmp_path / "creds"
    create_ca(creds)
    for uri in [role_uri("party", n) for n in NAMES] + [role_uri("provider")]:
        issue(creds, uri)
    relay = Relay()
    ctx = mp.get_context("spawn")
    out: Any = ctx.Queue()
    store_path = str(tmp_path / "store")
    procs = [
        ctx.Process(target=_role, args=(r, store_path, str(creds), relay.port, out))
        for r in range(len(NAMES) + 1)
    ]
    # Execute
    for p in procs:
        p.start()
    reports: dict[int, tuple[str, Any, list[bytes]]] = {}
    try:
        while len(reports) < len(procs):
            rank, status, result, sent = out.get(timeout=150)
            reports[rank] = (status, result, sent)
    except queue.Empty:
        pytest.fail(f"roles did not finish; reports from {sorted(reports)}")
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
        relay.close()
    # Assert: the run itself is right
    for rank, (status, result, _) in reports.items():
        assert status == "ok", (rank, result)
    want_z = SECRET_X * SECRET_Y
    want_mm = SECRET_X.reshape(2, 4) @ SECRET_Y.reshape(4, 2)
    for rank in range(len(NAMES)):
        res = reports[rank][1]
        torch.testing.assert_close(torch.tensor(res["z"]), want_z, atol=1e-2, rtol=0)
        torch.testing.assert_close(torch.tensor(res["mm"]), want_mm, atol=1e-2, rtol=0)
        assert torch.equal(torch.tensor(res["c"]), (SECRET_X > SECRET_Y).float())
    # Assert: three links (alice-bob, alice-provider, bob-provider), each TLS 1.3
    assert len(relay.streams) == 3
    for target, up, down in relay.streams:
        for direction in (bytes(up), bytes(down)):
            records = _records(direction)
            kinds = [k for k, _ in records]
            assert set(kinds) <= {0x14, 0x16, 0x17}, (target, set(kinds))
            assert kinds.count(0x16) == 1 and kinds[0] == 0x16  # only the Client/ServerHello
            assert all(v == 0x0303 for _, v in records[1:])  # TLS 1.3's record version
        # the ServerHello names TLS 1.3 (supported_versions = 0x0304)
        assert b"\x00\x2b\x00\x02\x03\x04" in bytes(down)[:200], target
    recording = b"".join(bytes(up) + bytes(down) for _, up, down in relay.streams)
    # Assert: no secret in the recording
    rng = random.Random(0)
    keys = [dealer_key(SEED, i) for i in range(len(NAMES))]
    assert all(k is not None and k not in recording for k in keys)
    checked = 0
    for _, _, sent in reports.values():
        for message in sent:
            for piece in _windows(message, rng):
                assert piece not in recording
                checked += 1
    assert checked > 50  # shares, openings, corrections, reveals were all sampled
    revealed = [smpc.encoding.FixedPoint(16).encode(v).numpy().tobytes() for v in (want_z, want_mm)]
    assert all(r not in recording for r in revealed)
    assert SECRET_X.numpy().tobytes() not in recording

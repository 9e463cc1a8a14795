"""Benchmark of the Paillier aggregator beside the masking and plain aggregators.

P1: per-client cost of one aggregation round with 10 selected clients, for the
    MLP 784-128-64-10 (109,386 parameters) and a 1,000,000-parameter update:
    seconds on one core to prepare the upload (plain: weight the update;
    masking: all four stages of one client; Paillier: quantize, pack and
    encrypt) and bytes uploaded per client, plus the server's and the key
    holder's time for the Paillier round. The Paillier server and key holder
    are timed on a full 10-client round in which clients 1-9 replay client 0's
    ciphertexts (the server's and key holder's work does not depend on the
    plaintexts), so only one client encrypts.
    Beside them: an estimate for unpacked Paillier (one ciphertext per
    parameter with a full ``r^n mod n^2``, as python-paillier does), the
    measured cost of one such encryption times the parameter count.

Run: ``python bench/bench_paillier.py [--quick] [--bits 16]`` (``--quick``: 109k only).
The machine may be shared; compare ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import secrets
import time
from collections.abc import Mapping
from typing import Any

import gmpy2  # type: ignore[import-untyped]
import numpy as np
import torch
from _common import StealMeter

import fl
from fl.aggregators import Aggregator, prepare_contribution
from fl.paillier import DecryptionRequest, PaillierInput, PaillierKeyHolder
from fl.types import ClientUpdate

N_CLIENTS = 10


class TimedKeyHolder(PaillierKeyHolder):
    """A key holder that records how long each decryption took."""

    seconds = 0.0

    def decrypt_sum(self, request: DecryptionRequest) -> np.ndarray:
        """Decrypt (timed)."""
        start = time.perf_counter()
        try:
            return super().decrypt_sum(request)
        finally:
            self.seconds += time.perf_counter() - start


def client_round(
    agg: Aggregator, ups: list[ClientUpdate], *, replay: bool = False
) -> dict[str, Any]:
    """Drive one round in process, timing client 0's answers and the server apart."""
    weights = agg.weights({u.client_id: u.num_examples for u in ups})
    dim = ups[0].delta.numel()
    start = time.perf_counter()
    server = agg.server_session(weights, dim)
    server_s = time.perf_counter() - start
    clients = {u.client_id: agg.client_session(u.client_id, u.delta) for u in ups}
    client_s = {cid: 0.0 for cid in clients}
    messages: Mapping[int, Any] | None = server.first()
    while messages is not None:
        replies: dict[int, Any] = {}
        for cid, msg in messages.items():
            if replay and cid != 0:
                first = replies[0]
                assert isinstance(first, PaillierInput)
                replies[cid] = PaillierInput(cid, first.ciphertexts, first.ciphertext_bytes)
                continue
            t0 = time.perf_counter()
            replies[cid] = clients[cid].respond(msg)
            client_s[cid] += time.perf_counter() - t0
        t0 = time.perf_counter()
        messages = server.step(replies)
        server_s += time.perf_counter() - t0
    res = server.result()
    return {"client_s": client_s[0], "server_s": server_s, "bytes": res.upload_bytes[0], "res": res}


def classic_encryption_seconds(key: Any, samples: int = 20) -> float:
    """Seconds for one unpacked Paillier encryption ``(1 + m n) r^n mod n^2``, full ``r``."""
    n = gmpy2.mpz(key.n)
    n2 = n * n
    start = time.perf_counter()
    for _ in range(samples):
        r = gmpy2.mpz(secrets.randbelow(key.n - 1) + 1)
        _ = (1 + 12345 * n) * gmpy2.powmod(r, n, n2) % n2
    return (time.perf_counter() - start) / samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="109k parameters only")
    ap.add_argument("--bits", type=int, default=16, help="Paillier quantization bits (16)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, gmpy2 {gmpy2.version()}")
    t0 = time.perf_counter()
    holder = TimedKeyHolder(2048)
    print(f"key generation (2048-bit n): {time.perf_counter() - t0:.2f} s")
    paillier = fl.PaillierAggregator(holder, clip_range=1.0, bits=args.bits)
    t0 = time.perf_counter()
    paillier.encryptor(holder.public_key, 10**6)
    print(f"fixed-base table (once per key): {time.perf_counter() - t0:.2f} s")
    classic = classic_encryption_seconds(holder.public_key)
    print(f"one unpacked encryption with a full r^n: {classic * 1e3:.2f} ms")
    print(
        f"P1: {N_CLIENTS} clients per round; per-client seconds (one core) and upload; "
        f"Paillier {args.bits}-bit slots + {paillier.quantizer(N_CLIENTS).headroom} bits headroom, "
        f"{paillier.quantizer(N_CLIENTS).slots} values per ciphertext"
    )
    print(
        "  params     aggregator          client s  x plain   bytes/param  server s  "
        "key holder s  steal"
    )
    dims = [109_386] if args.quick else [109_386, 1_000_000]
    for dim in dims:
        g = torch.Generator().manual_seed(dim)
        ups = [
            ClientUpdate(i, (torch.rand(dim, generator=g) - 0.5) * 0.2, 100)
            for i in range(N_CLIENTS)
        ]
        with StealMeter() as steal:
            plain = client_round(fl.PlainAggregator(), ups)
            # the plain client's work is one multiplication: time it over 20 repeats
            t0 = time.perf_counter()
            for _ in range(20):
                prepare_contribution(ups[0].delta, 0.1, None)
            plain["client_s"] = (time.perf_counter() - t0) / 20
            masking = client_round(fl.MaskingAggregator(clip_range=1.0), ups)
            holder.seconds = 0.0
            pail = client_round(paillier, ups, replay=True)
            # every client replays client 0's input and the weights are equal: mean = delta_0
            err = float((pail["res"].mean - ups[0].delta).abs().max())
        base = plain["client_s"]
        rows = [
            ("plain", plain, float("nan")),
            ("masking (32-bit)", masking, float("nan")),
            (f"Paillier ({args.bits}-bit)", pail, holder.seconds),
        ]
        for name, r, kh in rows:
            print(
                f"  {dim:9,d}  {name:18s}  {r['client_s']:8.3f}  {r['client_s'] / base:7.0f}  "
                f"{r['bytes'] / dim:11.3f}  {r['server_s']:8.3f}  {kh:12.3f}  "
                f"{steal.fraction:5.1%}"
            )
        est = classic * dim
        print(
            f"  {dim:9,d}  unpacked (estimate)  {est:8.0f}  {est / base:7.0f}  "
            f"{holder.public_key.ciphertext_bytes:11.3f}  (= {est / 3600:.1f} h per client)"
        )
        print(f"  Paillier round (client 0 replayed) vs client 0's update: max error {err:.2e}")


if __name__ == "__main__":
    main()

"""Latency benchmark: W2, W3, W4, W6 across network namespaces over an emulated link.

alice, bob and the crypto provider each run ``smpc-launch`` (TLS 1.3, mutual
authentication, credentials from ``smpc-credentials``) in a Linux network
namespace of their own. The namespaces are joined by a small user-space link
emulator (this script, in the root namespace), because kernels without
``sch_netem`` cannot add delay with ``tc``:

* one TUN device per role, opened here and then moved into the role's
  namespace, which gets address ``10.214.0.<i>`` and a route to the others
  through it;
* the emulator reads each IP packet from the sender's TUN, queues it per
  direction (sender, receiver) and writes it to the receiver's TUN at
  ``release = max(arrival + delay, previous release + size / rate)``:
  a one-way delay plus a serialising link of the given rate, FIFO, no loss;
* ICMP echo (as ``ping``) between role namespaces is measured before the run
  and printed in the header: it shows the configured round-trip time.

Profiles: ``lan`` (0.25 ms each way, 1 Gbit/s) and ``wan`` (20 ms each way,
100 Mbit/s), and the baseline ``none`` (no added delay, no rate limit: the
same namespaces, TLS and emulator process, so what it adds is visible).
Every workload prints seconds per op, online rounds and bytes sent per party
beside the targets for the WAN link. Needs root, ``ip netns``
and ``/dev/net/tun``; says why and exits 0 otherwise.

Run (as root)::

    python bench/bench_latency.py                 # both profiles
    python bench/bench_latency.py --profile wan --repeat 2
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import heapq
import json
import os
import secrets
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ROLES = ("alice", "bob", "dealer")
PORT = 29541
PROFILES = {  # one-way delay (s), rate (bit/s); "none": the emulator's own floor
    "none": (0.0, 1e12),
    "lan": (0.25e-3, 1e9),
    "wan": (20e-3, 100e6),
}
# Seconds per op over the WAN link that the core aims at (and the figures measured
# before the round-reduction work, for reference).
WAN_TARGETS = {
    "W3 relu 1e5": (0.6, 1.09),
    "W4 mse step": (0.8, 1.4),
    "W4 ce step": (1.6, 3.2),
    "W6 batch 1": (0.25, 0.46),
}

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def why_not() -> str | None:
    """``None`` if namespaces and TUN devices can be made here, else why not."""
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "making network namespaces and TUN devices needs root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is missing"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing"
    return None


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


def _open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


class Emulator:
    """Forwards IPv4 packets between TUN devices with a per-direction delay and rate."""

    def __init__(self, fds: dict[str, int], delay: float, rate: float) -> None:
        self.fds = fds  # ip address (4 bytes) -> tun fd
        self.delay = delay
        self.rate = rate

    def serve(self) -> None:
        """Run until killed (SIGTERM)."""
        by_fd = {fd: ip for ip, fd in self.fds.items()}
        last: dict[tuple[int, int], float] = {}
        queue: list[tuple[float, int, int, bytes]] = []
        seq = 0
        fds = list(by_fd)
        while True:
            now = time.monotonic()
            while queue and queue[0][0] <= now:
                _, _, dst, pkt = heapq.heappop(queue)
                # device down or full: the packet is lost, as on a wire
                with contextlib.suppress(OSError):
                    os.write(dst, pkt)
            wait = max(0.0, queue[0][0] - time.monotonic()) if queue else 1.0
            # select, not epoll: epoll rounds its timeout up to whole milliseconds
            ready, _, _ = select.select(fds, [], [], wait)
            for fd in ready:
                while True:
                    try:
                        pkt = os.read(fd, 65536)
                    except BlockingIOError:
                        break
                    if len(pkt) < 20 or pkt[0] >> 4 != 4:
                        continue  # IPv4 only (IPv6 router solicitations and the like)
                    dst = self.fds.get(pkt[16:20])
                    if dst is None:
                        continue
                    t = time.monotonic()
                    key = (fd, dst)
                    release = max(t + self.delay, last.get(key, 0.0) + len(pkt) * 8 / self.rate)
                    last[key] = release
                    seq += 1
                    heapq.heappush(queue, (release, seq, dst, pkt))


class Net:
    """Three role namespaces joined through TUN devices by an emulator process."""

    def __init__(self, delay: float, rate: float, mtu: int) -> None:
        tag = secrets.token_hex(2)
        self.ns = {role: f"smpl{tag}{role[0]}" for role in ROLES}
        self.addr = {role: f"10.214.0.{i + 1}" for i, role in enumerate(ROLES)}
        self.names: list[str] = []
        self.pid = 0
        try:
            for ns in self.ns.values():
                _sh("ip", "netns", "add", ns)
                self.names.append(ns)
            fds = {}
            for role, ns in self.ns.items():
                dev = f"tl{tag}{role[0]}"
                fds[socket.inet_aton(self.addr[role])] = _open_tun(dev)
                _sh("ip", "link", "set", dev, "netns", ns)
                _sh("ip", "-n", ns, "link", "set", "lo", "up")
                _sh("ip", "-n", ns, "link", "set", dev, "mtu", str(mtu), "up")
                _sh("ip", "-n", ns, "addr", "add", f"{self.addr[role]}/32", "dev", dev)
                _sh("ip", "-n", ns, "route", "add", "10.214.0.0/24", "dev", dev)
            pid = os.fork()
            if pid == 0:  # the emulator: forwards until SIGTERM
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                try:
                    Emulator(fds, delay, rate).serve()
                finally:
                    os._exit(0)
            self.pid = pid
            for fd in fds.values():
                os.close(fd)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop the emulator and delete the namespaces (idempotent)."""
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGTERM)
                os.waitpid(self.pid, 0)
            except OSError:
                pass
            self.pid = 0
        for name in self.names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)
        self.names = []


PING = """
import os, socket, struct, sys, time
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF); s += s >> 16
    return ~s & 0xFFFF
dst, n = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.settimeout(5)
rtts = []
for i in range(n):
    body = struct.pack("!HH", os.getpid() & 0xFFFF, i) + b"x" * 56
    hdr = struct.pack("!BBH", 8, 0, 0)
    pkt = struct.pack("!BBH", 8, 0, csum(hdr + body)) + body
    t0 = time.perf_counter()
    s.sendto(pkt, (dst, 0))
    while True:
        data = s.recv(2048)
        if data[20] == 0 and data[24:28] == body[:4]:
            break
    rtts.append(time.perf_counter() - t0)
    time.sleep(0.05)
print(min(rtts), sorted(rtts)[len(rtts) // 2], max(rtts))
"""


def ping(net: Net, src: str, dst: str, n: int = 5) -> tuple[float, float, float]:
    """(min, median, max) ICMP echo round-trip seconds from ``src`` to ``dst``."""
    out = subprocess.run(
        ["ip", "netns", "exec", net.ns[src], sys.executable, "-c", PING, net.addr[dst], str(n)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.split()
    lo, med, hi = (float(v) for v in out)
    return lo, med, hi


# The program every party runs (through smpc-launch); it imports this file's workloads.
SCRIPT = """
import sys
sys.path.insert(0, {bench!r})
from bench_latency import party_program
def main(sess):
    return party_program(sess, {repeat}, {only!r}, {out!r})
"""


def party_program(sess: Any, repeat: int, only: list[str], out: str) -> dict[str, Any]:
    """Time each workload in this party; rank 0 writes ``{name: (s, rounds, bytes)}``."""
    import statistics

    import torch

    import smpc.nn as snn
    import smpc.optim
    from smpc.autograd import no_grad
    from smpc.demo import build_model, encrypted_predict

    torch.manual_seed(0)
    results: dict[str, tuple[float, int, int]] = {}

    def timed(name: str, fn: Any) -> None:
        fn()  # warm-up
        times = []
        for _ in range(repeat):
            sess.comm.barrier()
            before = sess.stats.snapshot()
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
            used = sess.stats - before
        results[name] = (statistics.median(times), used.rounds, used.bytes)
        print(f"[{sess.rank}] {name}: {results[name]}", file=sys.stderr, flush=True)

    if "w2" in only:
        x = sess.share(torch.randn(64, 784) if sess.rank == 0 else None, src=0)
        w = sess.share(torch.randn(784, 128) if sess.rank == 1 else None, src=1)
        timed("W2 matmul 64x784@784x128", lambda: x @ w)
    if "w3" in only:
        r = sess.share(torch.randn(100_000) if sess.rank == 0 else None, src=0)
        timed("W3 relu 1e5", lambda: r.relu())
    mlp = build_model("mlp", 0)[1:]
    for loss in ("mse", "ce"):
        if f"w4{loss}" not in only:
            continue
        enc = snn.encrypt(mlp, sess, src=0)
        xs = sess.share(torch.rand(64, 784) if sess.rank == 1 else None, src=1)
        onehot = torch.nn.functional.one_hot(torch.randint(0, 10, (64,)), 10).float()
        ys = sess.share(onehot if sess.rank == 1 else None, src=1)
        opt = smpc.optim.SGD(enc.parameters(), lr=0.05, momentum=0.9)
        loss_fn: Any = snn.CrossEntropyLoss() if loss == "ce" else snn.MSELoss()

        def step(
            enc: Any = enc, xs: Any = xs, ys: Any = ys, opt: Any = opt, f: Any = loss_fn
        ) -> None:
            opt.zero_grad()
            f(enc(xs), ys).backward()
            opt.step()

        timed(f"W4 {loss} step", step)
    if "w6" in only:
        enc = snn.encrypt(mlp, sess, src=0)
        img = torch.rand(1, 784)

        def infer() -> None:
            with no_grad():
                encrypted_predict(sess, enc, img, n=1, batch_size=1, data_owner=1)

        timed("W6 batch 1", infer)
    if sess.rank == 0:
        Path(out).write_text(json.dumps(results))
    return results


def run_profile(
    name: str, repeat: int, only: list[str], mtu: int, timeout: float
) -> dict[str, Any]:
    """Make the namespaces and the emulated link, run the workloads, tear down."""
    from smpc.credentials import main as credentials_main

    delay, rate = PROFILES[name]
    net = Net(delay, rate, mtu)
    procs: list[subprocess.Popen[str]] = []
    try:
        lo, med, hi = ping(net, "alice", "bob")
        lo2, med2, _ = ping(net, "alice", "dealer")
        print(
            f"== {name}: {delay * 1e3:g} ms each way, {rate / 1e6:g} Mbit/s, MTU {mtu}; "
            f"ping alice->bob rtt min/med/max {lo * 1e3:.2f}/{med * 1e3:.2f}/{hi * 1e3:.2f} ms, "
            f"alice->dealer min/med {lo2 * 1e3:.2f}/{med2 * 1e3:.2f} ms "
            f"(configured {2 * delay * 1e3:g} ms) ==",
            flush=True,
        )
        with tempfile.TemporaryDirectory() as tmp:
            creds = Path(tmp) / "creds"
            assert credentials_main([str(creds), "--parties", "alice,bob", "--provider"]) == 0
            out = Path(tmp) / "out.json"
            script = Path(tmp) / "prog.py"
            script.write_text(
                textwrap.dedent(
                    SCRIPT.format(bench=str(ROOT / "bench"), repeat=repeat, only=only, out=str(out))
                )
            )
            env = {
                **os.environ,
                "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            }
            # The three "machines" share this machine's cores: one torch thread per role,
            # as smpc.run chooses (OpenMP's spinning workers would compete across roles).
            env.setdefault("OMP_NUM_THREADS", "1")
            env.pop("SMPC_CREDENTIALS", None)
            env.pop("GLOO_SOCKET_IFNAME", None)
            for role in ROLES:
                cmd = ["ip", "netns", "exec", net.ns[role], sys.executable, "-m", "smpc.launch"]
                cmd += ["--parties", "alice,bob", "--role", role]
                cmd += ["--master-addr", net.addr["alice"], "--master-port", str(PORT)]
                cmd += ["--timeout", str(timeout), "--credentials", str(creds)]
                if role != "dealer":
                    cmd.append(str(script))
                procs.append(
                    subprocess.Popen(
                        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
                    )
                )
            errs = [p.communicate()[1] for p in procs]
            for role, p, err in zip(ROLES, procs, errs, strict=True):
                if p.returncode != 0:
                    print(f"{role} failed (exit {p.returncode}):\n{err[-3000:]}")
            if not out.exists():
                return {}
            results: dict[str, Any] = json.loads(out.read_text())
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        net.close()
    for wl, (secs, rounds, nbytes) in results.items():
        line = f"{wl:26s} {secs:8.3f} s/op  rounds {rounds:4d}  bytes/party {nbytes:>12,}"
        if name == "wan" and wl in WAN_TARGETS:
            target, before = WAN_TARGETS[wl]
            line += f"  target <= {target:g} s ({secs / target:.1f}x it; {before:g} s before)"
        print(line, flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--profile", choices=[*PROFILES, "all"], default="all")
    p.add_argument("--repeat", type=int, default=3, help="timed repetitions per workload")
    p.add_argument(
        "--only",
        default="w2,w3,w4mse,w4ce,w6",
        help="comma-separated subset of w2,w3,w4mse,w4ce,w6",
    )
    p.add_argument("--mtu", type=int, default=9000, help="MTU of the emulated link")
    p.add_argument("--timeout", type=float, default=120.0, help="per-message timeout (s)")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    why = why_not()
    if why is not None:
        print(f"bench_latency skipped: {why}")
        return 0
    only = [w.strip() for w in args.only.split(",") if w.strip()]
    profiles = list(PROFILES) if args.profile == "all" else [args.profile]
    print("(shared machine: other processes may be running; figures are indicative)")
    allres = {}

    def _stop(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)  # clean up on kill too, not only on Ctrl-C
    try:
        for prof in profiles:
            allres[prof] = run_profile(prof, args.repeat, only, args.mtu, args.timeout)
    except KeyboardInterrupt:
        print("interrupted; namespaces and processes removed")
        return 130
    if len(allres) > 1:
        print("== seconds per op by profile (rounds beside) ==")
        names = list(dict.fromkeys(w for res in allres.values() for w in res))
        print(f"{'':26s}" + "".join(f"{prof:>10s}" for prof in allres) + "  rounds")
        for wl in names:
            cells = "".join(
                f"{res[wl][0]:10.3f}" if wl in res else f"{'-':>10s}" for res in allres.values()
            )
            rounds = next(res[wl][1] for res in allres.values() if wl in res)
            print(f"{wl:26s}{cells}  {rounds}")
    if args.json:
        Path(args.json).write_text(json.dumps(allres, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

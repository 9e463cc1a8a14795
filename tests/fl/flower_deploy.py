"""Runs :mod:`fl.flower` on Flower's deployment engine over TLS; prints the run as JSON.

Not a test module: ``tests/fl/test_flower.py`` starts it in a fresh network
namespace (only a loopback interface). One ``flower-superlink`` and three
``flower-supernode`` processes, every server bound to 127.0.0.1, TLS with a CA
and a server certificate made here with ``cryptography``, and SuperNode
authentication: the SuperLink runs with ``--enable-supernode-auth``, the three
SuperNodes' P-384 public keys are registered with ``flwr supernode register``
and each SuperNode signs in with ``--auth-supernode-private-key``. Two
intruders are started first and must be refused: one with a key that was never
registered, one with no key. The run has one round; SuperNode 2 gets stuck at
SHARE_KEYS and is killed (SIGKILL by PID) while the round is in progress; the
round must complete with the other two.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1/localhost: (ca.crt, server.pem, server.key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fl test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.crt", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def make_node_key(path: Path) -> Path:
    """A SuperNode's authentication key pair (EC P-384, OpenSSH format): ``path``, ``path.pub``."""
    key = ec.generate_private_key(ec.SECP384R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
    )
    pub = path.with_name(path.name + ".pub")
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
    )
    return pub


def _exited(p: subprocess.Popen[bytes], seconds: float) -> int | None:
    with contextlib.suppress(subprocess.TimeoutExpired):
        return p.wait(timeout=seconds)
    return None


def _wait(path: Path, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size > 0:
            return True
        time.sleep(0.2)
    return False


def main() -> None:  # noqa: PLR0915 - a linear script
    """Start the deployment, kill one SuperNode mid-round, print ``RESULT {json}``."""
    stage_timeout = float(sys.argv[1]) if len(sys.argv) > 1 else 30.0
    work = Path(tempfile.mkdtemp(prefix="fl-flower-deploy-"))
    ca, cert, key = make_certificates(work)
    env = dict(os.environ)
    env |= {
        "FLWR_HOME": str(work / "flwr"),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
    }
    link = _free_port()
    (work / "flwr").mkdir()
    (work / "flwr" / "config.toml").write_text(
        f'[superlink]\ndefault = "deploy"\n\n[superlink.deploy]\n'
        f'address = "127.0.0.1:{link}"\nroot-certificates = "{ca}"\n'
    )
    procs: list[subprocess.Popen[bytes]] = []

    def start(cmd: list[str], name: str) -> subprocess.Popen[bytes]:
        log = open(work / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        p = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        procs.append(p)
        return p

    out: dict[str, object] = {}
    try:
        start(
            [
                "flower-superlink",
                "--ssl-ca-certfile", str(ca),
                "--ssl-certfile", str(cert),
                "--ssl-keyfile", str(key),
                "--host", "127.0.0.1",
                "--port", str(link),
                "--enable-supernode-auth",
                "--disable-runtime-dependency-installation",
            ],
            "superlink",
        )  # fmt: skip
        time.sleep(3)
        registered = []
        for i in range(3):
            pub = make_node_key(work / f"node{i}")
            reg = subprocess.run(
                ["flwr", "supernode", "register", str(pub), "deploy", "--format", "json"],
                env=env,
                check=False,
                timeout=60,
                capture_output=True,
                text=True,
            )
            registered.append(int(json.loads(reg.stdout)["node-id"]))
        out["registered"] = registered
        make_node_key(work / "intruder")  # a valid key that was never registered

        def supernode(i: int, auth: list[str], name: str) -> subprocess.Popen[bytes]:
            return start(
                [
                    "flower-supernode",
                    "--superlink", f"127.0.0.1:{link}",
                    "--root-certificates", str(ca),
                    "--host", "127.0.0.1",
                    "--port", str(_free_port()),
                    "--node-config", f"partition-id={i} num-partitions=3",
                    *auth,
                ],
                name,
            )  # fmt: skip

        key_flag = "--auth-supernode-private-key"
        intruders = [
            supernode(0, [key_flag, str(work / "intruder")], "intruder_unregistered_key"),
            supernode(0, [], "intruder_no_key"),
        ]
        out["intruders_exit"] = [_exited(p, 90) for p in intruders]
        out["intruders_log"] = [
            (work / f"{n}.log").read_text(errors="replace")
            for n in ("intruder_unregistered_key", "intruder_no_key")
        ]
        nodes = [
            supernode(i, [key_flag, str(work / f"node{i}")], f"supernode{i}") for i in range(3)
        ]
        result = work / "result.json"
        run_config = (
            f"result-file='{result}' marker-dir='{work}' faults='2=hang:share_keys' "
            f"hang-seconds=300.0 stage-timeout={stage_timeout} min-nodes=3"
        )
        subprocess.run(
            [
                "flwr",
                "run",
                str(ROOT / "tests/fl/flower_testapp"),
                "deploy",
                "--run-config",
                run_config,
            ],
            env=env,
            check=True,
            timeout=120,
            capture_output=True,
        )
        stuck = _wait(work / "node2-share_keys", 180)
        out["killed_mid_round"] = stuck and not result.exists()
        os.kill(nodes[2].pid, signal.SIGKILL)  # the SuperNode process itself, by PID
        out["finished"] = _wait(result, 180)
        if out["finished"]:
            out |= json.loads(result.read_text())
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)  # each started in its own session
            p.wait(timeout=30)
        out["logs"] = {
            f.name: f.read_text(errors="replace")[-1500:] for f in sorted(work.glob("*.log"))
        }
        shutil.rmtree(work, ignore_errors=True)
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    sys.exit(main())

"""Credentials for runs across machines: a session CA, one key and certificate per role.

Every network link of a run across machines (party <-> party, party <-> crypto
provider, fl server <-> client) is TLS 1.3 with mutual authentication. Each
role holds a private key and a certificate signed by the session's CA (the
trust anchor the participants agreed on); a certificate names its role in a
subject-alternative-name URI:

====================  ============================  =====================
role                  URI in the certificate        files (in the folder)
====================  ============================  =====================
party ``alice``       ``smpc:party:alice``          ``party-alice.{pem,key}``
crypto provider       ``smpc:provider``             ``provider.{pem,key}``
fl server             ``fl:server``                 ``fl-server.{pem,key}``
fl client ``3``       ``fl:client:3``               ``fl-client-3.{pem,key}``
====================  ============================  =====================

A peer is accepted only if its certificate chains to the CA (``ca.pem``) *and*
names the role it claims to be, so one party cannot pose as another.

The console script ``smpc-credentials`` (:func:`main`) creates a CA (``ca.pem``
and ``ca.key``: keep ``ca.key`` on the machine that issues credentials) and
the roles' credentials (ECDSA P-256 keys, files ``0600``)::

    smpc-credentials creds --parties alice,bob --provider
    smpc-credentials creds --fl-server --fl-clients 3

Each machine then needs ``ca.pem`` and its own role's two files (in a folder
of the same layout). This module also builds the :class:`ssl.SSLContext` of a
role (:meth:`Credentials.context`) and checks a connected peer's identity
(:func:`peer_identity`); it is the bottom layer's only networking code and
imports nothing from the rest of smpc but its errors.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import re
import ssl
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import SmpcError

__all__ = [
    "Credentials",
    "CredentialsError",
    "InsecureTransportWarning",
    "create_ca",
    "issue",
    "role_file",
    "role_uri",
    "peer_identity",
    "resolve",
    "main",
    "ENV_CREDENTIALS",
]

# The folder of credentials when none is passed (smpc-launch, fl's networked mode).
ENV_CREDENTIALS = "SMPC_CREDENTIALS"

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_VALIDITY = datetime.timedelta(days=365)


class CredentialsError(SmpcError, ValueError):
    """Credentials are missing, unreadable, or do not fit the role they are used for."""


class InsecureTransportWarning(UserWarning):
    """A run across machines opted out of TLS (``insecure=True``): its traffic is exposed."""


def _check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise CredentialsError(
            f"a {kind} name must be 1-64 characters of letters, digits, '_', '.' or '-'; "
            f"got {name!r}"
        )
    return name


def role_uri(role: str, name: str | int | None = None) -> str:
    """The URI a role's certificate carries.

    Args:
        role: ``"party"``, ``"provider"``, ``"fl-server"`` or ``"fl-client"``.
        name: the party's name, or the fl client's id (``None`` for the others).
    """
    if role == "party":
        return f"smpc:party:{_check_name('party', str(name))}"
    if role == "provider":
        return "smpc:provider"
    if role == "fl-server":
        return "fl:server"
    if role == "fl-client":
        return f"fl:client:{_check_name('client', str(name))}"
    raise CredentialsError(
        f"`role` must be 'party', 'provider', 'fl-server' or 'fl-client'; got {role!r}"
    )


def role_file(uri: str) -> str:
    """The file stem of a role's credentials (``smpc:party:alice`` -> ``party-alice``)."""
    if uri == "smpc:provider":
        return "provider"
    if uri == "fl:server":
        return "fl-server"
    for prefix, stem in (("smpc:party:", "party-"), ("fl:client:", "fl-client-")):
        if uri.startswith(prefix):
            return stem + _check_name("role", uri[len(prefix) :])
    raise CredentialsError(f"not a role URI: {uri!r}")


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file readable by its owner only (0600 from the start)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def create_ca(folder: str | os.PathLike[str], *, name: str = "smpc session CA") -> Path:
    """Create a CA in ``folder`` (``ca.pem``, and ``ca.key`` with mode 0600); return ``ca.pem``.

    An existing CA is kept (never overwritten): issuing more credentials later
    uses the same trust anchor.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_path, key_path = out / "ca.pem", out / "ca.key"
    if cert_path.exists() and key_path.exists():
        return cert_path
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + 10 * _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    _write_private(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path


def issue(
    folder: str | os.PathLike[str],
    uri: str,
    *,
    hosts: Sequence[str] = (),
    ca_folder: str | os.PathLike[str] | None = None,
) -> tuple[Path, Path]:
    """Issue a key and certificate for the role ``uri``, signed by the CA of ``ca_folder``.

    Args:
        folder: where ``<stem>.pem`` and ``<stem>.key`` (mode 0600) are written.
        uri: the role's URI (:func:`role_uri`).
        hosts: DNS names or IP addresses of the role's machine, added as
            subject alternative names (informative: peers check the role URI).
        ca_folder: the folder with ``ca.pem`` and ``ca.key`` (default ``folder``).

    Returns:
        ``(certificate path, key path)``.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    stem = role_file(uri)
    ca_dir = Path(ca_folder if ca_folder is not None else folder)
    try:
        ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
        ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    except (OSError, ValueError) as e:
        raise CredentialsError(
            f"cannot read the CA in {str(ca_dir)!r} (ca.pem, ca.key): {e}; create it with "
            f"`smpc-credentials {ca_dir}`"
        ) from e
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise CredentialsError(f"the CA key in {str(ca_dir)!r} must be an ECDSA key")
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, uri)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_path, cert_path = out / f"{stem}.key", out / f"{stem}.pem"
    _write_private(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


@dataclass(frozen=True, slots=True)
class Credentials:
    """One role's TLS credentials: the CA to trust, its certificate and private key.

    Attributes:
        ca: path of the session CA's certificate (``ca.pem``).
        cert: path of this role's certificate.
        key: path of this role's private key.
        uri: the role this process claims (must be named by ``cert``).
    """

    ca: Path
    cert: Path
    key: Path
    uri: str

    def __repr__(self) -> str:  # paths only; never key material
        return f"Credentials(uri={self.uri!r}, cert={str(self.cert)!r}, ca={str(self.ca)!r})"

    @classmethod
    def load(cls, folder: str | os.PathLike[str], uri: str) -> Credentials:
        """Role ``uri``'s credentials in ``folder``: ``ca.pem``, ``<stem>.pem``, ``<stem>.key``.

        Raises:
            CredentialsError: a file is missing or the key is readable by others,
                with the command that creates them.
        """
        base = Path(folder)
        stem = role_file(uri)
        creds = cls(base / "ca.pem", base / f"{stem}.pem", base / f"{stem}.key", uri)
        missing = [str(p) for p in (creds.ca, creds.cert, creds.key) if not p.is_file()]
        if missing:
            raise CredentialsError(
                f"credentials of {uri!r} not found in {str(base)!r} (missing {missing}); "
                f"create them with `{_hint(uri, base)}` and copy ca.pem, {stem}.pem and "
                f"{stem}.key to this machine"
            )
        mode = creds.key.stat().st_mode & 0o077
        if mode:
            raise CredentialsError(
                f"the private key {str(creds.key)!r} is readable by other users (mode "
                f"{oct(creds.key.stat().st_mode & 0o777)}); `chmod 600` it"
            )
        return creds

    def context(self, *, server: bool) -> ssl.SSLContext:
        """A TLS 1.3 context that presents this role and requires a peer signed by the CA.

        The peer's *role* is checked after the handshake (:func:`peer_identity`):
        host names are not checked (the role URI is what names a peer).
        """
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.maximum_version = ssl.TLSVersion.TLSv1_3
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.options |= ssl.OP_NO_TICKET  # links are long-lived: no resumption tickets
        try:
            ctx.load_cert_chain(self.cert, self.key)
            ctx.load_verify_locations(cafile=self.ca)
        except (OSError, ssl.SSLError) as e:
            raise CredentialsError(f"cannot load the credentials of {self.uri!r}: {e}") from e
        return ctx


def _hint(uri: str, folder: Path) -> str:
    if uri.startswith("smpc:party:"):
        return f"smpc-credentials {folder} --parties {uri.split(':', 2)[2]}"
    if uri == "smpc:provider":
        return f"smpc-credentials {folder} --provider"
    if uri == "fl:server":
        return f"smpc-credentials {folder} --fl-server"
    return f"smpc-credentials {folder} --fl-clients N"


def peer_identity(sock: ssl.SSLSocket | ssl.SSLObject) -> str | None:
    """The role URI named by a connected peer's (verified) certificate, or ``None``.

    A certificate that names several role URIs names none (``None``).
    """
    cert = sock.getpeercert()
    if not cert:
        return None
    sans = cert.get("subjectAltName", ())
    uris = [pair[1] for pair in sans if isinstance(pair, tuple) and pair[0] == "URI"]
    roles = [u for u in uris if isinstance(u, str) and u.startswith(("smpc:", "fl:"))]
    return roles[0] if len(roles) == 1 else None


def resolve(
    credentials: Credentials | str | os.PathLike[str] | None, uri: str
) -> Credentials | None:
    """``credentials`` as :class:`Credentials` for role ``uri``.

    A folder is loaded for ``uri``; ``None`` falls back to the folder named by
    ``$SMPC_CREDENTIALS`` (``None`` if unset); a :class:`Credentials` must be for ``uri``.
    """
    if credentials is None:
        env = os.environ.get(ENV_CREDENTIALS)
        if not env:
            return None
        credentials = env
    if isinstance(credentials, Credentials):
        if credentials.uri != uri:
            raise CredentialsError(
                f"`credentials` are for {credentials.uri!r}; this process runs as {uri!r}"
            )
        return credentials
    if not isinstance(credentials, (str, os.PathLike)):
        raise TypeError(
            f"`credentials` must be a folder or smpc.credentials.Credentials; got "
            f"{type(credentials).__name__}"
        )
    return Credentials.load(credentials, uri)


# --------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``smpc-credentials``: a CA and per-role credentials in a folder."""
    ap = argparse.ArgumentParser(
        prog="smpc-credentials",
        description=(
            "Create a session CA (ca.pem, ca.key) in FOLDER if there is none, and a key + "
            "certificate for each role named. Give every machine ca.pem and its own role's "
            "<role>.pem and <role>.key; keep ca.key where credentials are issued."
        ),
    )
    ap.add_argument("folder", help="where the CA and the credentials are written")
    ap.add_argument("--parties", default="", help="comma-separated party names")
    ap.add_argument("--provider", action="store_true", help="the crypto provider")
    ap.add_argument("--fl-server", action="store_true", help="the fl server")
    ap.add_argument(
        "--fl-clients", default="", help="fl client ids: a count N (0..N-1) or a comma list"
    )
    ap.add_argument(
        "--host", action="append", default=[], help="a host name or IP to add (repeatable)"
    )
    args = ap.parse_args(argv)
    try:
        uris = [role_uri("party", p) for p in args.parties.split(",") if p]
        if args.provider:
            uris.append(role_uri("provider"))
        if args.fl_server:
            uris.append(role_uri("fl-server"))
        clients = args.fl_clients
        ids = [str(i) for i in range(int(clients))] if clients.isdigit() else clients.split(",")
        uris += [role_uri("fl-client", c) for c in ids if c]
        create_ca(args.folder)
        for uri in uris:
            cert, key = issue(args.folder, uri, hosts=args.host)
            print(f"{uri}: {cert} {key}")
    except CredentialsError as e:
        print(f"smpc-credentials: {e}", file=sys.stderr)
        return 2
    print(f"CA: {Path(args.folder) / 'ca.pem'} (keep ca.key private)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

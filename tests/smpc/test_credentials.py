"""smpc-credentials: a CA and per-role keys and certificates; loading and checking them."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from smpc.credentials import (
    Credentials,
    CredentialsError,
    create_ca,
    issue,
    main,
    resolve,
    role_file,
    role_uri,
)


def test_cli_creates_a_ca_and_every_role(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code = main(
        [str(tmp_path / "c"), "--parties", "alice,bob", "--provider", "--fl-server"]
        + ["--fl-clients", "2", "--host", "10.0.0.1", "--host", "alice.example"]
    )
    # Assert: files, modes, certificates that chain to the CA and name their role
    assert code == 0
    folder = tmp_path / "c"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    ca = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
    stems = ["party-alice", "party-bob", "provider", "fl-server", "fl-client-0", "fl-client-1"]
    uris = ["smpc:party:alice", "smpc:party:bob", "smpc:provider", "fl:server"]
    uris += ["fl:client:0", "fl:client:1"]
    for stem, uri in zip(stems, uris, strict=True):
        key_path = folder / f"{stem}.key"
        assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
        key = load_pem_private_key(key_path.read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
        cert = x509.load_pem_x509_certificate((folder / f"{stem}.pem").read_bytes())
        cert.verify_directly_issued_by(ca)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert san.get_values_for_type(x509.UniformResourceIdentifier) == [uri]
        public = cert.public_key()
        assert isinstance(public, ec.EllipticCurvePublicKey)
        assert public.public_numbers() == key.public_key().public_numbers()
        assert role_file(uri) == stem
    assert stat.S_IMODE((folder / "ca.key").stat().st_mode) == 0o600
    assert "keep ca.key private" in capsys.readouterr().out


def test_issuing_later_keeps_the_ca(tmp_path: Path) -> None:
    create_ca(tmp_path)
    before = (tmp_path / "ca.pem").read_bytes()
    create_ca(tmp_path)
    issue(tmp_path, role_uri("party", "carol"))
    assert (tmp_path / "ca.pem").read_bytes() == before


def test_console_script_runs_as_a_module(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "smpc.credentials", str(tmp_path), "--parties", "2"],
        capture_output=True, text=True, env={**os.environ}, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "party-2.pem").exists()  # "2" is a party name here, not a count


def test_missing_or_exposed_credentials_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(
        CredentialsError, match=r"not found .*`smpc-credentials .* --parties alice`"
    ):
        Credentials.load(tmp_path, role_uri("party", "alice"))
    create_ca(tmp_path)
    issue(tmp_path, role_uri("provider"))
    os.chmod(tmp_path / "provider.key", 0o644)
    with pytest.raises(CredentialsError, match="readable by other users.*chmod 600"):
        Credentials.load(tmp_path, role_uri("provider"))
    with pytest.raises(CredentialsError, match="cannot read the CA"):
        issue(tmp_path / "empty", role_uri("provider"))


def test_resolve_uses_the_environment_and_checks_the_role(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_ca(tmp_path)
    issue(tmp_path, role_uri("party", "alice"))
    monkeypatch.delenv("SMPC_CREDENTIALS", raising=False)
    assert resolve(None, role_uri("party", "alice")) is None
    monkeypatch.setenv("SMPC_CREDENTIALS", str(tmp_path))
    creds = resolve(None, role_uri("party", "alice"))
    assert isinstance(creds, Credentials) and creds.uri == "smpc:party:alice"
    with pytest.raises(CredentialsError, match="are for 'smpc:party:alice'"):
        resolve(creds, role_uri("party", "bob"))
    with pytest.raises(TypeError, match="`credentials` must be a folder"):
        resolve(42, role_uri("party", "alice"))  # type: ignore[arg-type]
    # repr names paths and the role, never key material
    assert "BEGIN" not in repr(creds) and "party-alice.pem" in repr(creds)


def test_role_names_are_checked() -> None:
    with pytest.raises(CredentialsError, match="party name must be"):
        role_uri("party", "alice:bob")
    with pytest.raises(CredentialsError, match="`role` must be"):
        role_uri("dealer")
    with pytest.raises(CredentialsError, match="not a role URI"):
        role_file("https://example.com")
    assert main(["/tmp/never", "--parties", "a b"]) == 2

"""TCRP over TLS on real processes: ``ocm-control --tls-cert --tls-key`` serves it on its
own port beside (or, with ``--no-plain-tcrp``, instead of) the plain one; ``ocm-chat --tls
--ca-file`` verifies the certificate, and refuses one it cannot verify with one line.

The certificates are made here with ``cryptography``: a test CA and a server certificate
for 127.0.0.1 and localhost, valid for a day."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest

from client.session import JoinFailed, TcrpTarget, client_tls_context, join_room
from client.session_aio import join_room_async
from tests.integration.harness import Server, start_server
from tests.integration.test_ops_support import start_control
from wire.codes import Operation
from wire.tcrp import Request, RequestBody

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

H = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[2]
JOINED = "{} がチャットルームに参加しました"
TLS_RE = r"ready tcp=\S+ .* tls=(?P<host>[\d.]+):(?P<port>\d+)"


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_pki(directory: Path, names: tuple[str, ...] = (H, "localhost")
             ) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key) as PEM files in ``directory``; the
    server certificate names ``names`` (IP addresses and DNS names)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("OCM test CA"))
          .issuer_name(_name("OCM test CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                       crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False,
                                       decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name("127.0.0.1"))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def tls_port(srv: Server) -> int:
    return int(srv.wait_log(TLS_RE)["port"])


def chat(*args: str, stdin: str = "", timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "client", *args], cwd=ROOT, input=stdin,
                          capture_output=True, text=True, timeout=timeout)


def test_tls_join_and_chat_beside_the_plain_port(tmp_path: Path) -> None:
    ca, cert, key = make_pki(tmp_path)
    with start_server("--tls-cert", str(cert), "--tls-key", str(key), "--tls-port", "0",
                      workers=2) as srv:
        port = tls_port(srv)
        context = client_tls_context(str(ca))
        host = join_room(TcrpTarget(H, port, tls=context),
            Request.of(Operation.CREATE, "secure", RequestBody("alice", "pw")))
        bob = join_room(TcrpTarget(H, port, tls=context),
            Request.of(Operation.JOIN, "secure", RequestBody("bob", "pw")))
        try:
            assert host.details.host and not bob.details.host
            # ocm-chat over TLS joins the same room and says something; both read it.
            done = chat("--tls", "--ca-file", str(ca), "--tcp-port", str(port), "--join",
                        "secure", "--user", "carol", "--password-stdin",
                        stdin="pw\nhello over tls\n")
            assert done.returncode == 0, done.stderr
            for member in (host, bob):
                member.udp_sock.settimeout(10)
                seen = []
                while "carol: hello over tls" not in seen:
                    data = member.udp_sock.recv(65536)
                    seen.append(_text(data))
            # The plain port still serves, and its room is the same registry.
            plain = join_room(TcrpTarget(H, srv.tcp_port),
                Request.of(Operation.JOIN, "secure", RequestBody("dave", "pw")))
            plain.udp_sock.close()
        finally:
            host.udp_sock.close()
            bob.udp_sock.close()


def _text(data: bytes) -> str:
    """Framed chat (``UsernameLen | Username | Message``) as ``name: text``."""
    if data and data[0]:
        n = data[0]
        return f"{data[1:1 + n].decode()}: {data[1 + n:].decode()}"
    return data.decode("utf-8", "replace")


def test_client_refuses_an_unverified_certificate(tmp_path: Path) -> None:
    ca, cert, key = make_pki(tmp_path)
    with start_server("--tls-cert", str(cert), "--tls-key", str(key), "--tls-port", "0",
                      workers=1) as srv:
        port = tls_port(srv)
        # Verified against the system's CAs, which do not know the test CA (ocm-chat
        # without --ca-file pins the key instead: tests/integration/test_tls_pinning.py).
        text = failure_text(TcrpTarget(H, port, client_tls_context(), 10))
        assert text == (f"the server at {H}:{port} has a TLS certificate that comes from a CA "
                        "this computer does not trust (unable to get local issuer "
                        "certificate); give its CA with --ca-file"), text
        # Trusting a certificate that did not issue the server's is no better.
        with pytest.raises(JoinFailed, match="from an unknown CA"):
            leaf = str(tmp_path / "server.pem")
            join_room(TcrpTarget("localhost", port, client_tls_context(leaf), ca_file=leaf),
                Request.of(Operation.CREATE, "r", RequestBody("eve")))
        # TLS to the plain port fails with one clear line as well.
        done = chat("--tls", "--ca-file", str(ca), "--tcp-port", str(srv.tcp_port),
                    "--create", "r", "--user", "eve")
        assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done


def test_tls_only_with_no_plain_tcrp(tmp_path: Path) -> None:
    ca, cert, key = make_pki(tmp_path)
    with start_control("--host", H, "--tcp-port", "0", "--udp-port", "0", "--stage1-port",
                       "0", "--admin-port=-1", "--workers", "1", "--tls-cert", str(cert),
                       "--tls-key", str(key), "--tls-port", "0", "--no-plain-tcrp") as (_, out):
        match = out.wait(r"ready tcp=disabled .* tls=[\d.]+:(?P<port>\d+)")
        joined = join_room(TcrpTarget(H, int(match["port"]), tls=client_tls_context(str(ca))),
            Request.of(Operation.CREATE, "only-tls", RequestBody("alice")))
        joined.udp_sock.close()
    refused = subprocess.run([sys.executable, "-m", "control", "--no-plain-tcrp", "--no-tls"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 78 and "TCRP would be served nowhere" in refused.stderr


# --- failures that name their cause, worded alike by the blocking and asyncio joins ----------
def failure_text(target: TcrpTarget) -> str:
    """The one line both joins fail with at ``target`` (they must agree)."""
    request = Request.of(Operation.CREATE, "r", RequestBody("eve"))
    with pytest.raises(JoinFailed) as blocking:
        join_room(target, request)

    async def join() -> None:
        await join_room_async(target, request)

    with pytest.raises(JoinFailed) as aio:
        asyncio.run(join())
    assert str(blocking.value) == str(aio.value)
    return str(blocking.value)


def test_a_certificate_without_the_address_says_which_names_it_has(tmp_path: Path) -> None:
    ca, cert, key = make_pki(tmp_path, names=("ocm.test", "127.0.0.9"))
    with start_server("--tls-cert", str(cert), "--tls-key", str(key), "--tls-port", "0",
                      workers=1) as srv:
        port = tls_port(srv)
        text = failure_text(TcrpTarget(H, port, client_tls_context(str(ca)), 10, str(ca)))
        assert text.startswith(f"the server at {H}:{port} has a TLS certificate that does not "
                               f"name the IP address {H} (it names ocm.test, 127.0.0.9)"), text
        assert "--ca-file" not in text
        text = failure_text(TcrpTarget("localhost", port, client_tls_context(str(ca)), 10,
                                       str(ca)))
        assert "does not name the name localhost (it names ocm.test" in text, text
        done = chat("--tls", "--ca-file", str(ca), "--tcp-port", str(port), "--create", "r",
                    "--user", "eve")
        assert done.returncode == 1 and done.stderr.startswith(
            f"ocm-chat: the server at {H}:{port} has a TLS certificate that does not name the "
            f"IP address {H} (it names ocm.test, 127.0.0.9)"), done.stderr


def test_a_wrong_ca_reads_differently_from_no_ca(tmp_path: Path) -> None:
    ca, cert, key = make_pki(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    wrong_ca, _, _ = make_pki(other)
    with start_server("--tls-cert", str(cert), "--tls-key", str(key), "--tls-port", "0",
                      workers=1) as srv:
        port = tls_port(srv)
        wrong = failure_text(TcrpTarget(H, port, client_tls_context(str(wrong_ca)), 10,
                                        str(wrong_ca)))
        assert wrong.startswith(f"the server at {H}:{port} has a TLS certificate from an "
                                f"unknown CA: the CA in {wrong_ca} did not issue it"), wrong
        assert wrong.endswith("give the CA that did with --ca-file"), wrong
        done = chat("--tls", "--ca-file", str(wrong_ca), "--tcp-port", str(port), "--create",
                    "r", "--user", "eve")
        assert done.returncode == 1 and done.stderr == f"ocm-chat: {wrong}\n", done.stderr
        none = failure_text(TcrpTarget(H, port, client_tls_context(), 10))
        assert none.startswith(f"the server at {H}:{port} has a TLS certificate that comes "
                               "from a CA this computer does not trust"), none
        assert none.endswith("give its CA with --ca-file"), none


def test_plain_and_tls_ports_mixed_up_get_a_hint(tmp_path: Path) -> None:
    ca, cert, key = make_pki(tmp_path)
    with start_server("--tls-cert", str(cert), "--tls-key", str(key), "--tls-port", "0",
                      workers=1) as srv:
        port = tls_port(srv)
        plain_on_tls = failure_text(TcrpTarget(H, port, None, 10))
        assert plain_on_tls == (f"the server at {H}:{port} closed the connection before "
                                "answering; if this is its TLS port, drop --no-tls (or use its "
                                "plain port)"), plain_on_tls
        tls_on_plain = failure_text(TcrpTarget(H, srv.tcp_port, client_tls_context(str(ca)),
                                               10, str(ca)))
        assert tls_on_plain.startswith(f"TLS with the server at {H}:{srv.tcp_port} failed ("), \
            tls_on_plain
        assert tls_on_plain.endswith("it may be its plain TCRP port; use its TLS port, or add "
                                     "--no-tls"), tls_on_plain

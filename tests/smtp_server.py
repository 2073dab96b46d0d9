"""A real SMTP server (aiosmtpd) on loopback that keeps what it receives, for warning mail.

`smtp_server` is a plain server as a co-op's local relay would be;
`smtp_tls_server` requires STARTTLS and then AUTH (user `quotad`, password in
`.password`), with a self-signed certificate that the client trusts through
`SSL_CERT_FILE`, the same way an admin would point quotad at a private CA.
Each received mail is a `Received`: the envelope as the server saw it and
the message parsed back.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.conftest import need

USERNAME = "quotad"
PASSWORD = "s3cret-Pa55"


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage


@dataclass
class SmtpServer:
    """A running server: where it listens, and what it has received so far."""

    host: str
    port: int
    messages: list[Received] = field(default_factory=list)
    # Recipients answered with 550 at RCPT TO, as a server does for an unknown user.
    reject: set[str] = field(default_factory=set)
    # Mail to these is answered 421 after its text, as a server going down does.
    hang_up_on: set[str] = field(default_factory=set)
    password: str | None = None
    # The certificate to trust for STARTTLS, or None on a plain server.
    ca_file: Path | None = None

    def clear(self) -> None:
        self.messages.clear()

    def to(self, address: str) -> list[Received]:
        """The mail delivered to ADDRESS (envelope recipient)."""
        return [r for r in self.messages if address in r.rcpt_tos]


class _Handler:
    def __init__(self, server: SmtpServer) -> None:
        self.server = server

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self,
        server: SMTP,  # noqa: ARG002 - the hook's signature
        session: Session,  # noqa: ARG002
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],  # noqa: ARG002
    ) -> str:
        if address in self.server.reject:
            return "550 5.1.1 no such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self,
        server: SMTP,  # noqa: ARG002 - the hook's signature
        session: Session,  # noqa: ARG002
        envelope: Envelope,
    ) -> str:
        if self.server.hang_up_on.intersection(envelope.rcpt_tos):
            return "421 4.3.2 shutting down"
        # SMTP carries CRLF; a mailbox (and these tests) read lines ending in LF.
        content = (envelope.original_content or b"").replace(b"\r\n", b"\n")
        message = BytesParser(policy=policy.default).parsebytes(content)
        assert isinstance(message, EmailMessage)
        self.server.messages.append(
            Received(envelope.mail_from or "", list(envelope.rcpt_tos), message)
        )
        return "250 OK queued"


def _authenticator(
    server: SMTP,
    session: Session,
    envelope: Envelope,
    mechanism: str,
    auth_data: Any,
) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        USERNAME.encode(),
        PASSWORD.encode(),
    )
    # handled=False: aiosmtpd answers 535 itself; True would leave the client waiting.
    return AuthResult(success=ok, handled=False)


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start(server: SmtpServer, **kwargs: Any) -> Controller:
    controller = Controller(
        _Handler(server),
        hostname=server.host,
        port=server.port,
        server_hostname="smtp.test",
        **kwargs,
    )
    controller.start()
    return controller


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    server = SmtpServer("127.0.0.1", free_port())
    controller = _start(server)
    try:
        yield server
    finally:
        controller.stop()


@pytest.fixture(scope="session")
def smtp_certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key."""
    openssl = shutil.which("openssl")
    if openssl is None:
        need("openssl", "apt-get install openssl")
        raise AssertionError("unreachable")
    folder = tmp_path_factory.mktemp("smtp-tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def smtp_tls_server(
    smtp_certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> Iterator[SmtpServer]:
    cert, key = smtp_certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    server = SmtpServer("127.0.0.1", free_port(), password=PASSWORD, ca_file=cert)
    controller = _start(
        server,
        tls_context=context,
        require_starttls=True,
        auth_required=True,
        authenticator=_authenticator,
    )
    try:
        yield server
    finally:
        controller.stop()

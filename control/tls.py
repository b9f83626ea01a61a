"""TLS for TCRP (stdlib ``ssl``): the server context of ``ocm-control --tls-cert --tls-key``.

The TLS listener (``tls_port``, default ``wire.limits.DEFAULT_TLS_PORT``) speaks exactly the
TCRP of the plain port inside TLS: same frames, same one request per connection, same 2-byte
registration after State 2. The TLS handshake must finish within ``tcp_timeout``. Chat
datagrams (UDP) are not protected by it: docs/security.md.
"""

from __future__ import annotations

import ssl


class TlsSetupError(Exception):
    """The certificate or key cannot be loaded; the message names the files."""


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server context (TLS 1.2 or later, the stdlib's secure defaults) with the
    certificate chain of ``cert_file`` and the key of ``key_file``; raise
    ``TlsSetupError`` when either cannot be read or they do not match."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except FileNotFoundError as exc:
        raise TlsSetupError(f"cannot load the TLS certificate: {exc.filename}: "
                            f"{exc.strerror}") from None
    except OSError as exc:  # ssl.SSLError is an OSError
        raise TlsSetupError(f"cannot load the TLS certificate {cert_file} with the key "
                            f"{key_file}: {exc}") from None
    return context

"""SIP over TLS (RFC 3261 §26.2.1): the certificate settings, checked once at start-up, and
a sans-IO TLS session that the TCP shell puts between its socket and its framer.

Why memory BIOs rather than asyncio's `ssl=` transports: with those a connection reaches
its protocol only once the handshake is over, so the connection caps, the trunk ACL and the
message deadline could neither see nor stop a peer that opens connections and never
finishes a handshake, and the ACL would run after the CPU of a handshake was spent. Here the
TCP shell registers a TLS connection at accept like any other, applies every rule, and the
handshake is simply the first thing its peer owes it (transport/tcp.py).

Verification (README "Transports"): with `sip.tls.ca` set, peers connecting to a tls://
listener must present a certificate chaining to it (mutual TLS, RFC 5246 §7.4.4), and
servers sipmask connects to must chain to it and name the host sipmask dialled (RFC 5922
§7.2, RFC 6125: an IP address must be an iPAddress subjectAltName). Without it, peers
connecting to us are not asked for a certificate, and servers sipmask connects to are
checked against the system's trust store (and host name) instead.
"""

from __future__ import annotations

import contextlib
import ssl
from dataclasses import dataclass
from pathlib import Path

from sipmask.config.schema import TlsConfig
from sipmask.errors import ConfigError

READ_SIZE = 65536


@dataclass(frozen=True)
class TlsContexts:
    server: ssl.SSLContext      # connections peers open to a tls:// listener
    client: ssl.SSLContext      # connections sipmask opens (trunks, requests to peers)


class _EncryptedKey(Exception):
    """OpenSSL asked for a pass phrase: the key file is encrypted."""


def _refuse_pass_phrase() -> str:
    # Without a callback OpenSSL would prompt on the terminal and block start-up.
    raise _EncryptedKey


def _read(key: str, path: Path) -> str:
    try:
        return path.read_text("ascii")
    except OSError as exc:
        raise ConfigError(key, "", f"cannot read {path} ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(key, "", f"{path} is not a PEM file") from None


def _check_certificates(key: str, path: Path, text: str) -> None:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=text)
    except (ssl.SSLError, ValueError):
        raise ConfigError(key, "", f"{path} holds no PEM certificate") from None


def _load_chain(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    try:
        context.load_cert_chain(cert, key, password=_refuse_pass_phrase)
    except _EncryptedKey:
        raise ConfigError("sip.tls.key", "", f"{key} is encrypted; give sipmask an unencrypted "
                          "PEM key (and protect the file instead)") from None
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError("sip.tls.key", "", f"{key} is not the key of the certificate in "
                              "sip.tls.cert") from None
        raise ConfigError("sip.tls.key", "", f"{key} holds no PEM private key") from None


def load_contexts(config: TlsConfig) -> TlsContexts:
    """Both contexts from `sip.tls`. Raises ConfigError naming the key at fault (its source
    is that key path: the config file's name is not known here)."""
    if config.cert is None:
        raise ConfigError("sip.tls.cert", "", "is required for tls:// (a PEM certificate chain)")
    if config.key is None:
        raise ConfigError("sip.tls.key", "", "is required for tls:// (the certificate's PEM key)")
    _check_certificates("sip.tls.cert", config.cert, _read("sip.tls.cert", config.cert))
    _read("sip.tls.key", config.key)
    ca_text = None
    if config.ca is not None:
        ca_text = _read("sip.tls.ca", config.ca)
        _check_certificates("sip.tls.ca", config.ca, ca_text)

    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # The system trust store only when no CA is named (see the module docstring).
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_text)
    for context in (server, client):
        context.minimum_version = ssl.TLSVersion.TLSv1_2   # RFC 8996: no TLS 1.0/1.1
        # The client context shows the certificate to servers that ask (mutual TLS).
        _load_chain(context, config.cert, config.key)
    if ca_text is not None:
        server.load_verify_locations(cadata=ca_text)
        server.verify_mode = ssl.CERT_REQUIRED
    return TlsContexts(server, client)


class TlsSession:
    """One connection's TLS, sans-IO: ciphertext in (`receive`), plaintext out; plaintext
    in (`send`), ciphertext out (`output`). Plaintext sent before the handshake is over is
    held and goes out when it completes."""

    def __init__(self, context: ssl.SSLContext, *, server_side: bool,
                 server_hostname: str | None = None) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side,
                                     server_hostname=server_hostname)
        self._held: list[bytes] = []
        self.established = False
        self.peer_closed = False     # the peer sent close_notify

    def start(self) -> None:
        """A client speaks first: this puts its ClientHello in `output()`."""
        self._handshake()

    def receive(self, data: bytes) -> bytes:
        """Ciphertext from the peer; returns the plaintext it completes. Raises
        ssl.SSLError when the handshake fails (no or an untrusted certificate, not TLS at
        all) or a record is bad; `output()` may then hold the alert for the peer."""
        self._incoming.write(data)
        if not self.established:
            self._handshake()
            if not self.established:
                return b""
        chunks: list[bytes] = []
        while True:
            try:
                chunk = self._tls.read(READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.peer_closed = True
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def send(self, data: bytes) -> None:
        if self.established:
            self._tls.write(data)
        else:
            self._held.append(data)

    def output(self) -> bytes:
        """Ciphertext to write to the socket now."""
        return self._outgoing.read()

    def close(self) -> None:
        """Put a close_notify in `output()` (RFC 8446 §6.1), best effort."""
        if self.established:
            with contextlib.suppress(ssl.SSLError):
                self._tls.unwrap()   # raises SSLWantRead: the peer's close_notify is not awaited

    def _handshake(self) -> None:
        try:
            self._tls.do_handshake()
        except ssl.SSLWantReadError:
            return
        self.established = True
        for data in self._held:
            self._tls.write(data)
        self._held.clear()

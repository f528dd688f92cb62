"""Keys, certificates and signatures of one cluster (driver and executors).

Every TCP channel tfos opens (the control gRPC server, cross-executor feed sockets)
runs over mutually authenticated TLS 1.3 with one :class:`Credential` per cluster
generation: an ECDSA P-256 key and a self-signed certificate that is at once the
server's certificate, the clients' certificate and the only trusted root. The driver
makes it; executors receive it inside Spark task closures (Spark's own channel, which
``spark.authenticate`` and ``spark.network.crypto.enabled`` protect), never over a tfos
socket. A peer without the key fails the TLS handshake before it can send a request;
a relay sees only TLS records; replayed records fail TLS's own integrity checks. A feed
connection leaves TLS after its handshake for AES-GCM records keyed by fresh shares the
two ends exchanged inside TLS (:func:`feed_keys`, :class:`tfos.feed._protocol.SealedStream`):
the same protection at less than half TLS's CPU cost in Python.

A reservation's runs are signed with an Ed25519 key (:class:`RunSigner`) that never
leaves the reserving process and its handle file: agents and the control server hold
only the public key, so a party that can call the control plane cannot sign code. A
signature covers the run id, and each run id is accepted once.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import logging
import os
import secrets
import ssl
import tempfile
from dataclasses import dataclass, field
from typing import Any

from tfos import _constants as C
from tfos.errors import AuthError, TFOSConfigError

log = logging.getLogger(__name__)

#: The name in every cluster certificate; peers check it instead of an address, which varies.
TLS_NAME = "tfos-cluster"
_CERT_DAYS = 366


@dataclass(frozen=True)
class Credential:
    """A cluster generation's TLS identity (PEM). Plain data: pickled into task closures."""

    cert_pem: bytes
    key_pem: bytes = field(repr=False)

    @classmethod
    def make(cls) -> Credential:
        """A fresh key pair and a self-signed certificate for :data:`TLS_NAME` (a few milliseconds)."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, TLS_NAME)])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))  # executors' clocks may lag
            .not_valid_after(now + datetime.timedelta(days=_CERT_DAYS))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(TLS_NAME)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(key, hashes.SHA256())
        )
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return cls(cert.public_bytes(serialization.Encoding.PEM), key_pem)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the certificate (public): names the cluster's identity in logs and handles."""
        return hashlib.sha256(self.cert_pem).hexdigest()

    def to_json(self) -> dict[str, str]:
        return {"cert": self.cert_pem.decode(), "key": self.key_pem.decode()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Credential:
        return cls(str(data["cert"]).encode(), str(data["key"]).encode())

    # ---- gRPC ------------------------------------------------------------------------------
    def grpc_server(self) -> Any:
        import grpc

        return grpc.ssl_server_credentials([(self.key_pem, self.cert_pem)], root_certificates=self.cert_pem,
                                           require_client_auth=True)

    def grpc_channel(self) -> Any:
        import grpc

        return grpc.ssl_channel_credentials(root_certificates=self.cert_pem, private_key=self.key_pem,
                                            certificate_chain=self.cert_pem)

    # ---- Python sockets (the feed) -----------------------------------------------------------
    def ssl_context(self, server: bool) -> ssl.SSLContext:
        """A TLS 1.3 context that presents this credential and trusts nothing else."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=self.cert_pem.decode())
        _load_chain(ctx, self.cert_pem, self.key_pem)
        if not server:
            ctx.check_hostname = True  # against TLS_NAME: the certificate is this cluster's, not a host's
        return ctx


def _load_chain(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """``load_cert_chain`` reads files only: hand it the PEM through an anonymous in-memory file."""
    pem = cert_pem + key_pem
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("tfos-tls", os.MFD_CLOEXEC)
        try:
            os.write(fd, pem)
            ctx.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    fd, path = tempfile.mkstemp(prefix="tfos-tls-")  # mode 0600, removed at once
    try:
        os.write(fd, pem)
        os.close(fd)
        ctx.load_cert_chain(path)
    finally:
        os.unlink(path)


def feed_tls() -> bool:
    """Whether cross-executor feeds run over TLS (``TFOS_FEED_TLS``, read on the driver)."""
    raw = C.get_str(C.FEED_TLS).strip()
    if raw not in ("0", "1"):
        raise TFOSConfigError(f"TFOS_FEED_TLS={raw!r} must be 1 (encrypt cross-executor feeds, the default) or 0")
    if raw == "0":
        log.warning("TFOS_FEED_TLS=0: cross-executor feeds travel unencrypted (still authenticated); anyone on "
                    "the network can read the fed rows. Unset it outside benchmarks.")
    return raw == "1"


# ---- feed challenge-response (Unix sockets, and TCP with TFOS_FEED_TLS=0) ---------------------
def feed_token(credential: Credential) -> bytes:
    """The key of the feed's challenge-response, derived from the credential's private key."""
    return hmac.new(credential.key_pem, b"tfos feed challenge v2", hashlib.sha256).digest()


def new_nonce() -> str:
    return secrets.token_hex(16)


# ---- feed record keys (TCP with TFOS_FEED_TLS=1) ------------------------------------------------
def new_key_share() -> str:
    """One end's half of a TLS feed connection's record keys: sent inside TLS, never outside it."""
    return secrets.token_hex(32)


def is_key_share(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def feed_keys(feeder_share: str, node_share: str) -> tuple[bytes, bytes]:
    """The AES-256 keys of a feed connection's sealed records (feeder to node, node to feeder).

    HKDF-SHA256 over both ends' fresh shares, which only the two ends of the TLS session saw:
    each connection gets its own keys, whoever else holds the cluster's credential.
    """
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    keys = HKDF(hashes.SHA256(), 64, salt=None, info=b"tfos feed records v1").derive(
        bytes.fromhex(feeder_share) + bytes.fromhex(node_share))
    return keys[:32], keys[32:]


def prove(token: bytes, nonce: str, role: str) -> str:
    """Proof that the sender holds ``token``, bound to the peer's fresh ``nonce`` and the sender's role."""
    return hmac.new(token, f"{role}\0{nonce}".encode(), hashlib.sha256).hexdigest()


def check_proof(token: bytes, nonce: str, role: str, proof: Any) -> bool:
    if not isinstance(proof, str) or len(proof) != 64:
        return False
    return hmac.compare_digest(prove(token, nonce, role).encode(), proof.encode("ascii", "replace"))


# ---- run signing (reservations) ---------------------------------------------------------------
def _signed_bytes(run_id: str, blob: bytes) -> bytes:
    return b"tfos run v2\0" + run_id.encode() + b"\0" + hashlib.sha256(blob).digest()


@dataclass(frozen=True)
class RunSigner:
    """The Ed25519 key that signs a reservation's runs; lives in the reserving process and the handle file."""

    private_pem: bytes = field(repr=False)

    @classmethod
    def make(cls) -> RunSigner:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519

        key = ed25519.Ed25519PrivateKey.generate()
        return cls(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))

    def _key(self) -> Any:
        from cryptography.hazmat.primitives import serialization

        return serialization.load_pem_private_key(self.private_pem, password=None)

    @property
    def public(self) -> str:
        """The verifying key, base64 (raw 32 bytes): what agents and the control server hold."""
        from cryptography.hazmat.primitives import serialization

        raw = self._key().public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return base64.b64encode(raw).decode()

    def sign(self, run_id: str, blob: bytes) -> str:
        return base64.b64encode(self._key().sign(_signed_bytes(run_id, blob))).decode()


def verify_run(public: str, run_id: str, blob: bytes, signature: Any) -> None:
    """Raises AuthError unless ``signature`` is the reservation's signature of ``blob`` as run ``run_id``."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ed25519

    try:
        key = ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(public))
        key.verify(base64.b64decode(str(signature), validate=True), _signed_bytes(run_id, blob))
    except (InvalidSignature, ValueError) as exc:
        raise AuthError("a run's main_fun is not signed with this reservation's key (the key in its handle "
                        "file); refusing to load it") from exc


def new_run_id() -> str:
    return secrets.token_hex(16)

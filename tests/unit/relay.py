"""An observer on the path between two tfos processes, for the hostile-peer tests: it forwards one TCP
connection and records both directions, and it names the secret material an observer must never see."""

from __future__ import annotations

import socket
import threading

from tfos._security import Credential, feed_token


class Relay:
    """Forwards the first connection it accepts to ``target``, recording ``upstream`` and ``downstream``."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        self.port = self.address[1]
        self.upstream, self.downstream = bytearray(), bytearray()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        client, _ = self.listener.accept()
        server = socket.create_connection(self.target)
        for src, dst, record in ((client, server, self.upstream), (server, client, self.downstream)):
            threading.Thread(target=self._pump, args=(src, dst, record), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, record: bytearray) -> None:
        try:
            while data := src.recv(1 << 16):
                record += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass


def key_material(credential: Credential) -> list[bytes]:
    """Every form of the credential's secret an observer could use: the private scalar, the PEM, the feed token."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(credential.key_pem, password=None)
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    token = feed_token(credential)
    body = b"".join(credential.key_pem.splitlines()[1:-1])
    return [scalar, token, token.hex().encode(), body[:40], credential.key_pem]

"""Kalshi's signed request headers: RSA-PSS (SHA-256) over timestamp + method + path.

Pure: the key, the time and the path are arguments. The key and the signature are
never logged; `KalshiSigner.__repr__` shows the key id only.
"""

from __future__ import annotations

import base64

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa


class BadKey(ValueError):
    """The configured private key cannot be used (the message never contains it)."""


def load_private_key(pem: bytes) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise BadKey("not an unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise BadKey("not an RSA private key")
    return key


class KalshiSigner:
    def __init__(self, key_id: str, key: rsa.RSAPrivateKey) -> None:
        self.key_id = key_id
        self._key = key

    def __repr__(self) -> str:
        return f"KalshiSigner(key_id={self.key_id!r})"

    def headers(self, timestamp_ms: int, method: str, path: str) -> dict[str, str]:
        """KALSHI-ACCESS-KEY/-TIMESTAMP/-SIGNATURE for one request."""
        message = f"{timestamp_ms}{method.upper()}{path}".encode()
        signature = self._key.sign(
            message,
            padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH),
            hashes.SHA256(),
        )
        return {
            "KALSHI-ACCESS-KEY": self.key_id,
            "KALSHI-ACCESS-TIMESTAMP": str(timestamp_ms),
            "KALSHI-ACCESS-SIGNATURE": base64.b64encode(signature).decode(),
        }

"""Signed, expiring output links: what ``<video>``/``<audio>`` elements and downloads use
when the API needs a bearer token they cannot send.
"""

from __future__ import annotations

import hashlib
import hmac

LINK_TTL = 12 * 3600  # seconds a signed output URL stays valid


def _link_key(token: str) -> bytes:
    return hmac.new(token.encode(), b"sonomask output links", hashlib.sha256).digest()


def signature(token: str, job_id: str, name: str, expires: int) -> str:
    msg = f"{job_id}/{name}/{expires}".encode()
    return hmac.new(_link_key(token), msg, hashlib.sha256).hexdigest()[:32]

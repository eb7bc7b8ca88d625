"""Webhooks that cannot be pointed at the server's own network.

A job's ``webhook`` URL is checked when the job is submitted (a 400 that says why) and
again when the job document is sent, because DNS may answer differently by then:

- ``http`` or ``https`` only, no user name or password in the URL;
- the host is resolved and EVERY address it resolves to is checked: loopback, link-local
  (169.254/16, fe80::/10, cloud metadata), private (10/8, 172.16/12, 192.168/16,
  fc00::/7), shared (100.64/10), unspecified, multicast and reserved addresses are refused.
  Numeric spellings (``0x7f000001``, ``2130706433``, ``0177.0.0.1``, ``::ffff:127.0.0.1``)
  resolve like any host and are caught the same way;
- ``SONOMASK_WEBHOOK_ALLOW`` (comma-separated host names, IPs, CIDRs): when set, only the
  hosts it names may be called, and those may be internal ones;
- the request goes to the address that was checked (no second lookup, so DNS cannot swap
  the address in between), with the URL's host in ``Host`` and for TLS in SNI and the
  certificate check; redirects are not followed; 10 s timeout; failures are logged only.

Signed, as Stripe does: with ``SONOMASK_WEBHOOK_SECRET`` set, every POST carries
``Sonomask-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``,
computed over the exact bytes of the body at the moment of each attempt; a receiver
recomputes it (``verify``), compares in constant time and refuses a timestamp more than
``TOLERANCE`` (300 s) away from its own clock, so a captured request cannot be replayed
later. ``Sonomask-Delivery`` is one id per notification, the same on every retry (for
receivers that want to drop a duplicate).

Retried with exponential back-off (``deliver``): a connection failure, a timeout, a host that
does not resolve, 408, 425, 429 and 5xx are tried again after 1, 2, 4, 8, 16, 32 and 60 s
(doubling, capped at ``RETRY_CAP``; a longer ``Retry-After`` is honoured up to the cap),
8 attempts in all, re-checking the address and re-signing each time. 2xx is delivered;
3xx (redirects are not followed) and other 4xx are final. The jobs send through
``deliver_later``, on a background thread, so no worker waits on a slow receiver; pending
retries are kept in memory only (a worker that dies drops them).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import logging
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from worker.errors import BadInput

log = logging.getLogger("sonomask.webhooks")
TIMEOUT = 10.0
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_SHARED = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

SIGNATURE_HEADER = "Sonomask-Signature"
DELIVERY_HEADER = "Sonomask-Delivery"
TOLERANCE = 300.0  # seconds a receiver accepts between the signature's t and its clock
RETRY_BASE = 1.0  # seconds before the first retry; doubles each time
RETRY_CAP = 60.0  # the longest wait between two attempts
ATTEMPTS = 8  # the first try and seven retries: about two minutes in all
_RETRY_STATUSES = frozenset({408, 425, 429})


class WebhookRefused(BadInput):
    """The webhook URL may not be called from this server (HTTP 400 at submit)."""


class Unresolved(WebhookRefused):
    """The webhook's host does not resolve (now): refused at submit, retried at send time."""


class SignatureError(ValueError):
    """A webhook's signature header is missing, malformed, stale or does not match."""


@dataclass(frozen=True)
class Target:
    """A checked webhook: where to connect (``ip``) and what to call it (``host``)."""

    scheme: str
    host: str
    ip: str
    port: int
    path: str


def _internal(ip: IPAddress) -> bool:
    """Whether ``ip`` belongs to the server's own machine or network, or is no unicast host."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo or (None, None))[1]
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and _internal(embedded):
            return True
    return (
        ip.is_loopback
        or ip.is_link_local
        or ip.is_private
        or ip.is_unspecified
        or ip.is_multicast
        or ip.is_reserved
        or ip in _SHARED
        or not ip.is_global
    )


def _allowed(host: str, ip: IPAddress, allow: tuple[str, ...]) -> bool:
    """Whether the allow-list names ``host`` (exactly, or ``.example.com`` for its
    subdomains) or holds ``ip`` (an address or a CIDR)."""
    for entry in allow:
        entry = entry.strip().lower()
        try:
            if ip in ipaddress.ip_network(entry.strip("[]"), strict=False):
                return True
            continue
        except ValueError:
            pass
        if host == entry or (entry.startswith(".") and host.endswith(entry)):
            return True
    return False


def _parse(url: str) -> tuple[str, str, int, str]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise WebhookRefused("webhook is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise WebhookRefused("webhook must be an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise WebhookRefused("webhook URL must not carry a user name or password")
    path = parts.path or "/"
    if parts.query:
        path += f"?{parts.query}"
    return scheme, parts.hostname.lower(), port or (443 if scheme == "https" else 80), path


def check(url: str, allow: tuple[str, ...] = ()) -> Target:
    """Resolve and vet ``url``; the Target to connect to, or ``WebhookRefused``."""
    scheme, host, port, path = _parse(url)
    if any(ord(c) < 33 for c in url):
        raise WebhookRefused("webhook URL must not contain spaces or control characters")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError):
        raise Unresolved(f"webhook host {host[:100]!r} does not resolve") from None
    ips = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    if not ips:
        raise Unresolved(f"webhook host {host[:100]!r} does not resolve")
    for ip in ips:
        if allow and not _allowed(host, ip, allow):
            raise WebhookRefused(
                f"webhook host {host[:100]!r} is not in this server's allow-list "
                "(SONOMASK_WEBHOOK_ALLOW)"
            )
        if not allow and _internal(ip):
            raise WebhookRefused(
                f"webhook host {host[:100]!r} is an internal address (loopback, private, "
                "link-local or reserved); only public hosts, or those in "
                "SONOMASK_WEBHOOK_ALLOW, can be called"
            )
    return Target(scheme, host, str(ips[0]), port, path)


class _PinnedHTTP(http.client.HTTPConnection):
    """HTTP to a fixed IP; ``host`` only names it (Host header)."""

    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._ip = target.ip

    def connect(self) -> None:
        self.sock = socket.create_connection((self._ip, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to a fixed IP, with SNI and the certificate checked for the URL's host."""

    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(
            target.host, target.port, timeout=timeout, context=ssl.create_default_context()
        )
        self._ip = target.ip

    def connect(self) -> None:
        raw = socket.create_connection((self._ip, self.port), self.timeout)
        self.sock = self._context.wrap_socket(raw, server_hostname=self.host)


def sign(body: bytes, secret: str, timestamp: float | None = None) -> str:
    """The ``Sonomask-Signature`` value for ``body``: ``t=<unix>,v1=<hex>``, where hex is
    HMAC-SHA256 keyed with ``secret`` over ``b"<t>." + body``."""
    t = int(time.time() if timestamp is None else timestamp)
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify(
    body: bytes,
    header: str | None,
    secret: str,
    tolerance: float = TOLERANCE,
    now: float | None = None,
) -> int:
    """Check a received webhook: the signature's timestamp (returned) when ``header``
    signs exactly ``body`` with ``secret`` and is at most ``tolerance`` seconds from
    ``now``; else SignatureError saying why. Several ``v1=`` entries may be given (one
    per secret while a secret is rotated); any one matching is enough."""
    if not header:
        raise SignatureError(f"no {SIGNATURE_HEADER} header")
    t: int | None = None
    macs: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit() and len(value) <= 12:
            t = int(value)
        elif key == "v1" and value:
            macs.append(value.strip().lower())
    if t is None or not macs:
        raise SignatureError(f"{SIGNATURE_HEADER} is not t=<unix seconds>,v1=<hex>")
    age = (time.time() if now is None else now) - t
    if abs(age) > tolerance:
        raise SignatureError(
            f"the signature's timestamp is {age:.0f} s away (over {tolerance:g} s)"
        )
    expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    if not any(hmac.compare_digest(expected, m) for m in macs):
        raise SignatureError("the signature does not match the body")
    return t


def backoff(
    attempts: int = ATTEMPTS, base: float = RETRY_BASE, cap: float = RETRY_CAP
) -> list[float]:
    """Seconds to wait before each retry: base, 2 base, 4 base ... never above ``cap``."""
    return [min(cap, base * 2**i) for i in range(max(0, attempts - 1))]


@dataclass(frozen=True)
class _Outcome:
    delivered: bool
    retry: bool  # worth trying again
    retry_after: float = 0.0  # what the receiver asked for (Retry-After), seconds


def _attempt(
    url: str,
    body: bytes,
    allow: tuple[str, ...],
    timeout: float,
    secret: str | None,
    delivery: str | None,
) -> _Outcome:
    try:
        target = check(url, allow)
    except WebhookRefused as e:
        log.warning("webhook not sent: %s", e)
        return _Outcome(False, isinstance(e, Unresolved))
    conn_type = _PinnedHTTPS if target.scheme == "https" else _PinnedHTTP
    conn = conn_type(target, timeout)
    try:
        headers = {"Content-Type": "application/json", "User-Agent": "sonomask-webhook"}
        if delivery:
            headers[DELIVERY_HEADER] = delivery
        if secret:
            headers[SIGNATURE_HEADER] = sign(body, secret)
        conn.request("POST", target.path, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read(65536)
        if 300 <= resp.status < 400:
            log.warning("webhook %s answered %s; redirects are not followed", url, resp.status)
        elif resp.status >= 400:
            log.warning("webhook %s answered %s", url, resp.status)
        retry = resp.status in _RETRY_STATUSES or resp.status >= 500
        after = resp.getheader("Retry-After") or ""
        wait = float(after) if after.isdigit() and len(after) < 8 else 0.0
        return _Outcome(200 <= resp.status < 300, retry, wait)
    except (OSError, http.client.HTTPException) as e:
        log.warning("webhook %s failed: %s", url, e)
        return _Outcome(False, True)
    finally:
        conn.close()


def send(
    url: str,
    body: bytes,
    allow: tuple[str, ...] = (),
    timeout: float = TIMEOUT,
    secret: str | None = None,
) -> bool:
    """POST ``body`` (JSON) to ``url`` once, if it is still allowed, signed when a
    ``secret`` is given; whether it was delivered (2xx). Never raises: a webhook that fails
    is logged, the job is not affected. ``deliver`` retries."""
    return _attempt(url, body, allow, timeout, secret, uuid.uuid4().hex).delivered


def deliver(
    url: str,
    body: bytes,
    allow: tuple[str, ...] = (),
    secret: str | None = None,
    timeout: float = TIMEOUT,
    delays: Sequence[float] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """``send`` with retries after ``delays`` (default ``backoff()``) while the failure is
    worth retrying; whether it was delivered. Each attempt is checked and signed anew
    (a fresh timestamp); all carry the same ``Sonomask-Delivery`` id."""
    delivery = uuid.uuid4().hex
    waits = list(backoff() if delays is None else delays)
    for n in range(len(waits) + 1):
        outcome = _attempt(url, body, allow, timeout, secret, delivery)
        if outcome.delivered:
            return True
        if not outcome.retry:
            return False
        if n == len(waits):
            break
        cap = max(waits[n], RETRY_CAP)
        sleep(min(cap, max(waits[n], outcome.retry_after)))
    log.warning("webhook %s: gave up after %d attempts", url, len(waits) + 1)
    return False


def deliver_later(
    url: str,
    body: bytes,
    allow: tuple[str, ...] = (),
    secret: str | None = None,
    timeout: float = TIMEOUT,
    delays: Sequence[float] | None = None,
) -> threading.Thread:
    """``deliver`` on a daemon thread (started, returned): the caller never waits."""
    thread = threading.Thread(
        target=deliver,
        args=(url, body, allow, secret, timeout, delays),
        name="sonomask-webhook",
        daemon=True,
    )
    thread.start()
    return thread

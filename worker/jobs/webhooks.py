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
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

from worker.errors import BadInput

log = logging.getLogger("sonomask.webhooks")
TIMEOUT = 10.0
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_SHARED = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class WebhookRefused(BadInput):
    """The webhook URL may not be called from this server (HTTP 400 at submit)."""


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
        raise WebhookRefused(f"webhook host {host[:100]!r} does not resolve") from None
    ips = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    if not ips:
        raise WebhookRefused(f"webhook host {host[:100]!r} does not resolve")
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


def send(url: str, body: bytes, allow: tuple[str, ...] = (), timeout: float = TIMEOUT) -> bool:
    """POST ``body`` (JSON) to ``url`` if it is still allowed; whether it was delivered
    (2xx). Never raises: a webhook that fails is logged, the job is not affected."""
    try:
        target = check(url, allow)
    except WebhookRefused as e:
        log.warning("webhook not sent: %s", e)
        return False
    conn_type = _PinnedHTTPS if target.scheme == "https" else _PinnedHTTP
    conn = conn_type(target, timeout)
    try:
        headers = {"Content-Type": "application/json", "User-Agent": "sonomask-webhook"}
        conn.request("POST", target.path, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read(65536)
        if 300 <= resp.status < 400:
            log.warning("webhook %s answered %s; redirects are not followed", url, resp.status)
        elif resp.status >= 400:
            log.warning("webhook %s answered %s", url, resp.status)
        return 200 <= resp.status < 300
    except (OSError, http.client.HTTPException) as e:
        log.warning("webhook %s failed: %s", url, e)
        return False
    finally:
        conn.close()

"""Signed webhooks and their retries, against a real local HTTP receiver.

The receiver checks signatures with the helper the README documents (extracted from the
README and run as is) and cross-checks with an HMAC computed here from the scheme's
definition, so the docs, the sender and the scheme cannot drift apart.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from service import free_port

from worker.jobs import webhooks

README = Path(__file__).resolve().parent.parent / "README.md"
SECRET = "s3cret-shared-with-the-receiver"
ALLOW = ("127.0.0.1",)
HEADER = re.compile(r"^t=(\d+),v1=([0-9a-f]{64})$")


def _readme_verify():
    """The README's ``verify_sonomask``, executed from the README's own code block."""
    text = README.read_text()
    block = next(
        b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "def verify_sonomask" in b
    )
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)  # noqa: S102 - our own documentation
    return scope["verify_sonomask"]


verify_sonomask = _readme_verify()


def _by_the_definition(body: bytes, header: str | None, secret: str) -> bool:
    """``t=<unix>,v1=<hex>[,v1=<hex>...]``: some v1 is HMAC-SHA256(secret, "<t>." + body)
    and t is within 300 s of now."""
    m = re.fullmatch(r"t=(\d+)((?:,v1=[0-9a-f]{64})+)", header or "")
    if not m or abs(time.time() - int(m[1])) > 300:
        return False
    mac = hmac.new(secret.encode(), m[1].encode() + b"." + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(mac, v) for v in re.findall(r"v1=([0-9a-f]{64})", m[2]))


class Receiver:
    """A real HTTP server: 204 for a valid signature, 400 otherwise; ``script`` answers first."""

    def __init__(self, script: list[tuple[int, dict]] | None = None):
        self.got: list[dict] = []
        self.script = list(script or [])
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                header = self.headers.get("Sonomask-Signature")
                ok = header is not None and verify_sonomask(body, header, SECRET)
                agree = ok == _by_the_definition(body, header, SECRET)
                try:
                    why = webhooks.verify(body, header, SECRET) and "ok"
                except webhooks.SignatureError as e:
                    why = str(e)
                receiver.got.append(
                    {
                        "at": time.monotonic(),
                        "body": body,
                        "headers": dict(self.headers),
                        "valid": ok,
                        "why": why,
                        "agree": agree and (why == "ok") == ok,
                    }
                )
                status, extra = receiver.script.pop(0) if receiver.script else (0, {})
                status = status or (204 if ok else 400)
                self.send_response(status)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", free_port()), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def post(self, body: bytes, headers: dict[str, str]) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        conn.request("POST", "/hook", body=body, headers=headers)
        status = conn.getresponse().status
        conn.close()
        return status

    def close(self):
        self.server.shutdown()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def test_a_signed_post_verifies_and_a_tampered_or_stale_one_is_refused(receiver):
    body = json.dumps({"id": "abc123", "state": "succeeded", "outputs": ["target.wav"]}).encode()
    assert webhooks.send(receiver.url, body, ALLOW, secret=SECRET) is True
    [sent] = receiver.got
    assert sent["valid"] and sent["why"] == "ok" and sent["body"] == body
    header = sent["headers"]["Sonomask-Signature"]
    t = int(HEADER.match(header).group(1))
    assert abs(t - time.time()) < 5
    assert re.fullmatch(r"[0-9a-f]{32}", sent["headers"]["Sonomask-Delivery"])
    # Replays of that request: the exact one passes; a changed body or secret does not.
    replay = {"Content-Type": "application/json", "Sonomask-Signature": header}
    assert receiver.post(body, replay) == 204
    tampered = body.replace(b"succeeded", b"failed")
    assert receiver.post(tampered, replay) == 400
    assert receiver.got[-1]["why"] == "the signature does not match the body"
    assert receiver.post(body + b" ", replay) == 400
    forged = {**replay, "Sonomask-Signature": webhooks.sign(body, "not-the-secret")}
    assert receiver.post(body, forged) == 400
    # Stale: signed correctly but more than 5 minutes ago (or ahead); 299 s is still fine.
    for age, status in ((301, 400), (3600, 400), (-301, 400), (299, 204)):
        old = {**replay, "Sonomask-Signature": webhooks.sign(body, SECRET, time.time() - age)}
        assert receiver.post(body, old) == status, age
        if status == 400:
            assert "timestamp" in receiver.got[-1]["why"]
    # The captured header itself goes stale for a receiver 301 s later.
    with pytest.raises(webhooks.SignatureError, match="timestamp"):
        webhooks.verify(body, header, SECRET, now=t + 301)
    assert webhooks.verify(body, header, SECRET, now=t + 300) == t
    # No header, a malformed one.
    assert receiver.post(body, {"Content-Type": "application/json"}) == 400
    assert receiver.post(body, {"Sonomask-Signature": "sha256=deadbeef"}) == 400
    # A rotated secret: either of two v1 entries may match.
    both = f"{webhooks.sign(body, 'old-secret')},v1={HEADER.match(header).group(2)}"
    assert receiver.post(body, {"Sonomask-Signature": both}) == 204
    # The README's helper, webhooks.verify and the definition agreed on every request.
    assert len(receiver.got) == 12 and all(g["agree"] for g in receiver.got)


def test_the_readme_example_is_a_real_signature():
    text = README.read_text()
    m = re.search(r"Sonomask-Signature: (t=\d+,v1=[0-9a-f]{64})", text)
    body = b'{"id": "0123abcd", "state": "succeeded"}'
    assert "`" + body.decode() + "`" in text and "`example-secret`" in text
    t = int(m.group(1).split(",")[0][2:])
    assert webhooks.verify(body, m.group(1), "example-secret", now=t) == t
    assert webhooks.sign(body, "example-secret", t) == m.group(1)


def test_without_a_secret_nothing_is_signed(receiver):
    assert webhooks.send(receiver.url, b"{}", ALLOW) is False  # the receiver wants a signature
    assert "Sonomask-Signature" not in receiver.got[0]["headers"]


def test_retries_back_off_exponentially_with_the_defaults():
    """503, 503, 429 then 204: four attempts 1, 2 and 4 s apart (the default schedule),
    each signed afresh, all under one delivery id."""
    r = Receiver(script=[(503, {}), (503, {}), (429, {})])
    try:
        body = json.dumps({"id": "retry-me", "state": "failed"}).encode()
        t0 = time.monotonic()
        assert webhooks.deliver(r.url, body, ALLOW, secret=SECRET) is True
        took = time.monotonic() - t0
    finally:
        r.close()
    assert len(r.got) == 4
    gaps = [b["at"] - a["at"] for a, b in zip(r.got, r.got[1:], strict=False)]
    for gap, want in zip(gaps, (1.0, 2.0, 4.0), strict=True):
        assert want - 0.05 <= gap <= want + 1.0, gaps
    assert all(g["valid"] for g in r.got)
    assert len({g["headers"]["Sonomask-Delivery"] for g in r.got}) == 1
    assert all(g["body"] == body for g in r.got)
    print(f"4 attempts, gaps {[round(g, 2) for g in gaps]} s, {took:.1f} s in all")


def test_the_schedule_doubles_up_to_its_cap_and_final_answers_are_final():
    assert webhooks.backoff() == [1, 2, 4, 8, 16, 32, 60]  # 8 attempts, about 2 min
    long = webhooks.backoff(attempts=20, base=0.5, cap=30)
    assert long[:4] == [0.5, 1, 2, 4] and max(long) == 30 and long[-1] == 30
    waits: list[float] = []
    for status, extra, attempts, slept in (
        (400, {}, 1, []),  # the receiver refused it: final
        (401, {}, 1, []),
        (307, {"Location": "http://127.0.0.1:1/"}, 1, []),  # redirects are not followed
        (500, {}, 3, [0.01, 0.02]),  # retried until the schedule runs out
        (429, {"Retry-After": "3"}, 3, [3.0, 3.0]),  # a longer Retry-After is honoured
    ):
        r = Receiver(script=[(status, extra)] * 3)
        waits.clear()
        try:
            ok = webhooks.deliver(
                r.url, b"{}", ALLOW, secret=SECRET, delays=[0.01, 0.02], sleep=waits.append
            )
        finally:
            r.close()
        assert ok is False and len(r.got) == attempts and waits == slept, (status, waits)
    # Unreachable: retried; internal address without an allow-list: refused, not retried.
    port = free_port()
    waits.clear()
    assert not webhooks.deliver(f"http://127.0.0.1:{port}/", b"{}", ALLOW, sleep=waits.append)
    assert waits == webhooks.backoff()
    waits.clear()
    assert not webhooks.deliver(f"http://127.0.0.1:{port}/", b"{}", (), sleep=waits.append)
    assert waits == []


def test_deliver_later_does_not_make_the_caller_wait():
    r = Receiver(script=[(503, {})])
    try:
        t0 = time.monotonic()
        thread = webhooks.deliver_later(r.url, b'{"id": "bg"}', ALLOW, SECRET)
        assert time.monotonic() - t0 < 0.5
        thread.join(10)
        assert not thread.is_alive()
    finally:
        r.close()
    assert [g["valid"] for g in r.got] == [True, True]

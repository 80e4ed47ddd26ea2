"""``acs-trio phone`` as a process, without a browser: it prints the page's URL, serves the page
behind its token, and stops cleanly on SIGINT."""

from __future__ import annotations

import httpx

from tests.demo.softphone_page import PhoneServer


def test_phone_prints_a_url_that_serves_the_page() -> None:
    server = PhoneServer()
    try:
        assert server.url.startswith("http://127.0.0.1:") and "/softphone/" in server.url
        page = httpx.get(server.url, timeout=10)
        assert page.status_code == 200 and 'id="call"' in page.text
        base, _, _ = server.url.partition("/softphone/")
        assert httpx.get(f"{base}/softphone/{'x' * 32}/", timeout=10).status_code == 403
        assert httpx.get(f"{base}/api/incomingCall", timeout=10).status_code == 404
        assert httpx.get(f"{base}/healthz", timeout=10).json()["calls"] == 0
        server.wait_line("LOCAL TEST PEER", timeout_s=5)
    finally:
        assert server.stop() == 0

"""CPU time the event loop spends on one hostile IncomingCall POST (review H1).

The request: 4,500 minimal IncomingCall events in one ~0.9 MB JSON body, each with a forged log
line in the caller number, sent WITHOUT the webhook secret (an attacker does not have it).  The
app runs in-process under quart-trio's test client with a MockTransport ACS that answers every
``answer_call`` (as a slow-to-refuse ACS would), so everything measured is our own work.

    for i in 1 2 3 4 5; do python bench/webhook_flood.py; done   # one JSON line per run

Works against the code before issue 9 too (it ignores INCOMING_CALL_SECRET), which is how the
"before" number in docs/performance.md was taken (``git worktree add /tmp/before 2ab2531``).
"""

from __future__ import annotations

import io
import json
import logging
import os
import time

import httpx
import trio

from acs_trio.config import Settings
from acs_trio.control.app import create_app

EVENTS = 4500


def flood_body() -> bytes:
    events = [
        {
            "id": str(n),
            "eventType": "Microsoft.Communication.IncomingCall",
            "data": {
                "incomingCallContext": f"x{n}",
                "from": {"kind": "phoneNumber", "phoneNumber": {"value": "+1\nFAKE LOG LINE"}},
            },
        }
        for n in range(EVENTS)
    ]
    return json.dumps(events).encode()


def fake_acs(request: httpx.Request) -> httpx.Response:
    if request.url.path.endswith("/keys"):
        return httpx.Response(200, json={"keys": []})
    if request.url.path.endswith(":answer"):
        n = request.content.count(b"x")  # any id will do
        return httpx.Response(200, json={"callConnectionId": f"conn-{n}", "serverCallId": "s",
                                         "correlationId": "c"})  # fmt: skip
    return httpx.Response(204)


async def flood_once(body: bytes) -> None:
    """Start the app, send the flood once, print the measurement, and exit the process at once.

    Exiting from inside the app is deliberate: before issue 9 the junk calls would make the
    drain wait for their media, and the number is taken by then.
    """
    env = {
        "ACS_CONNECTION_STRING": "endpoint=https://acs.test/;accesskey=QUJDRA==",
        "PUBLIC_BASE_URL": "https://bot.test",
        "ACS_RESOURCE_ID": "r",
        "REALTIME_URL": "ws://127.0.0.1:9/v1/realtime",
        "INCOMING_CALL_SECRET": "bench-secret-0123456789abcdef",
        "MAX_CONCURRENT_CALLS": "200",  # the old default, as in the review's measurement
    }
    answers = 0

    def counting(request: httpx.Request) -> httpx.Response:
        nonlocal answers
        answers += request.url.path.endswith(":answer")
        return fake_acs(request)

    log = io.StringIO()
    logging.getLogger().addHandler(logging.StreamHandler(log))
    logging.getLogger().setLevel(logging.INFO)
    app = create_app(Settings.from_env(env), http_transport=httpx.MockTransport(counting))
    async with app.test_app() as test_app:
        client = test_app.test_client()
        headers = {"Content-Type": "application/json"}
        started = time.process_time()
        response = await client.post("/api/incomingCall", data=body, headers=headers)
        cpu_ms = (time.process_time() - started) * 1000
        await trio.sleep(0.5)  # let answer tasks (if any) run
        text = log.getvalue()
        result = {
            "body_bytes": len(body),
            "events": EVENTS,
            "status": response.status_code,
            "cpu_ms": round(cpu_ms, 1),
            "answers_sent": answers,
            "log_lines": text.count("\n"),
            "forged_line_at_start_of_a_line": "\nFAKE LOG LINE" in text,
        }
        print(json.dumps(result), flush=True)
        os._exit(0)


if __name__ == "__main__":
    trio.run(flood_once, flood_body())

"""The ACS JWT check: the token matrix, JWKS caching, and the unknown-kid refresh rate limit."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import trio

from acs_trio.control.acs_rest import open_acs_rest
from acs_trio.control.auth import JwtVerifier, bearer_token
from acs_trio.errors import AuthError, KeysUnavailable
from acs_trio.testing.tokens import TokenSigner, rsa_key
from tests.acs_service import ISSUER, JWKS_URL, RESOURCE_ID, signer


@pytest.fixture
def keys() -> TokenSigner:
    return signer()


@pytest.fixture
async def verifier(keys: TokenSigner) -> AsyncIterator[JwtVerifier]:
    def jwks(request: httpx.Request) -> httpx.Response:
        assert str(request.url) == JWKS_URL
        return httpx.Response(200, json=keys.jwks())

    async with open_acs_rest(None, transport=httpx.MockTransport(jwks)) as rest:
        yield JwtVerifier(rest, jwks_url=JWKS_URL, issuer=ISSUER, audience=RESOURCE_ID)


async def test_valid_token_verifies_and_keys_are_cached(
    keys: TokenSigner, verifier: JwtVerifier
) -> None:
    claims = await verifier.verify(keys.sign())
    assert claims["aud"] == RESOURCE_ID
    await verifier.verify(keys.sign())
    assert keys.fetches == 1


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda k: k.sign(-600), "ExpiredSignature"),
        (lambda k: k.sign(audience="another-resource"), "InvalidAudience"),
        (lambda k: k.sign(issuer="https://evil.example"), "InvalidIssuer"),
        (lambda k: k.sign(key=rsa_key("not-published")), "InvalidSignature"),
        (lambda k: "not.a.jwt", "malformed"),
    ],
    ids=["expired", "wrong-audience", "wrong-issuer", "bad-signature", "garbage"],
)
async def test_bad_tokens_are_refused(keys: TokenSigner, verifier: JwtVerifier, make, why) -> None:
    with pytest.raises(AuthError, match=why):
        await verifier.verify(make(keys))


async def test_unknown_kid_refreshes_once_then_is_rate_limited(
    keys: TokenSigner, verifier: JwtVerifier, autojump_clock: trio.testing.MockClock
) -> None:
    await verifier.verify(keys.sign())
    await trio.sleep(61)  # the cache is older than the refresh interval
    with pytest.raises(AuthError, match="unknown JWT kid 'junk-1'"):
        await verifier.verify(keys.sign(kid="junk-1"))
    assert keys.fetches == 2  # one refresh for the unknown kid
    for n in range(20):
        with pytest.raises(AuthError, match="unknown JWT kid"):
            await verifier.verify(keys.sign(kid=f"junk-{n}"))
    assert keys.fetches == 2  # junk kids cannot make us hammer the JWKS URL


async def test_first_token_with_unknown_kid_fetches_the_jwks_once(
    keys: TokenSigner, verifier: JwtVerifier
) -> None:
    for _ in range(3):
        with pytest.raises(AuthError, match="unknown JWT kid"):
            await verifier.verify(keys.sign(kid="rotated-away"))
    assert keys.fetches == 1


async def test_key_rotation_is_picked_up_on_unknown_kid(
    keys: TokenSigner, verifier: JwtVerifier, autojump_clock: trio.testing.MockClock
) -> None:
    await verifier.verify(keys.sign())
    await trio.sleep(61)  # past the refresh interval
    keys.rotate("key-2")  # a new key is published and signs from now on
    await verifier.verify(keys.sign())
    assert keys.fetches == 2


async def test_jwks_outage_is_not_the_callers_fault(keys: TokenSigner) -> None:
    def down(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503)

    async with open_acs_rest(None, transport=httpx.MockTransport(down)) as rest:
        verifier = JwtVerifier(rest, jwks_url=JWKS_URL, issuer=ISSUER, audience=RESOURCE_ID)
        with pytest.raises(KeysUnavailable):
            await verifier.verify(keys.sign())


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer", "Bearer  "])
def test_bearer_header_must_be_present_and_bearer(header: str | None) -> None:
    with pytest.raises(AuthError):
        bearer_token(header)


def test_bearer_token_extracts_the_token() -> None:
    assert bearer_token("Bearer abc.def.ghi") == "abc.def.ghi"


async def test_a_failed_first_fetch_is_retried_soon_and_is_not_the_callers_fault(
    keys: TokenSigner, autojump_clock: trio.testing.MockClock
) -> None:
    outage = [True]

    def flaky(request: httpx.Request) -> httpx.Response:
        return httpx.Response(503) if outage[0] else httpx.Response(200, json=keys.jwks())

    async with open_acs_rest(None, transport=httpx.MockTransport(flaky)) as rest:
        verifier = JwtVerifier(rest, jwks_url=JWKS_URL, issuer=ISSUER, audience=RESOURCE_ID)
        with pytest.raises(KeysUnavailable):
            await verifier.verify(keys.sign())
        with pytest.raises(KeysUnavailable):  # still no keys: 503, never 401 "unknown kid"
            await verifier.verify(keys.sign())
        outage[0] = False
        await trio.sleep(1)
        claims = await verifier.verify(keys.sign())
        assert claims["aud"] == RESOURCE_ID

"""Result webhooks reach public http(s) addresses only: at submit on the URL's text, at
delivery on every address its host resolves to (then connecting to a checked address)."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dialer.clock import FakeClock
from dialer.config import Settings, load_settings
from dialer.errors import ConfigError
from dialer.results import destinations
from dialer.results.webhooks import WebhookSender
from tests.fakes.server import serve

REFUSED_LITERALS = {
    "http://127.0.0.1:8080/hook": "loopback",
    "http://[::1]/hook": "loopback",
    "http://localhost/hook": "loopback",
    "http://[::ffff:127.0.0.1]/hook": "loopback",  # IPv4-mapped
    "http://10.1.2.3/hook": "private",
    "http://172.16.0.9/hook": "private",
    "http://192.168.1.1/hook": "private",
    "http://[fd00::1]/hook": "private",
    "http://169.254.169.254/latest/meta-data/": "link-local",  # cloud metadata
    "http://[fe80::1]/hook": "link-local",
    "http://224.0.0.1/hook": "multicast",
    "http://0.0.0.0/hook": "unspecified",
    "http://240.0.0.1/hook": "reserved",
    "http://100.64.0.1/hook": "non-public",  # shared address space (CGNAT)
    "http://[64:ff9b::a9fe:a9fe]/hook": "link-local",  # NAT64 form of 169.254.169.254
}


@pytest.mark.parametrize(("url", "cls"), list(REFUSED_LITERALS.items()))
def test_non_public_literal_hosts_are_refused_at_submit(url: str, cls: str) -> None:
    why = destinations.url_refusal(url, allow_private=False)
    assert why is not None and " address: result webhooks go only to public addresses" in why
    assert f" {cls} address" in why
    assert destinations.url_refusal(url, allow_private=True) is None


def test_public_hosts_and_names_pass_submit_but_other_schemes_do_not() -> None:
    for url in ("https://crm.example/hook", "http://8.8.8.8/x", "https://[2606:4700::1111]/x"):
        assert destinations.url_refusal(url, allow_private=False) is None
    for allow in (False, True):
        assert destinations.url_refusal("ftp://crm.example/x", allow_private=allow) == \
            "must be an http or https URL"


async def test_a_name_is_resolved_and_the_post_goes_to_the_checked_address() -> None:
    # "134744072" is how getaddrinfo also spells 8.8.8.8: a name that resolves without DNS
    [route] = await destinations.routes("https://134744072:8443/hook?x=1", allow_private=False)
    assert route.url == httpx.URL("https://8.8.8.8:8443/hook?x=1")
    assert route.headers == {"host": "134744072:8443"}
    assert route.extensions == {"sni_hostname": "134744072"}  # TLS still checks the name
    with pytest.raises(destinations.Refused, match=r"^127\.1 resolves to 127\.0\.0\.1, a loopback address"):
        await destinations.routes("http://127.1:8080/hook", allow_private=False)


def test_webhook_allow_private_defaults_to_sandbox_mode() -> None:
    def settings(**env: str) -> Settings:
        return load_settings(None, environ=env)

    live = {"DIALER_RYNG_BASE_URL": "https://acme.ryng.example"}
    assert settings().webhooks_to_private  # sandbox: the receiver is usually on 127.0.0.1
    assert not settings(**live).webhooks_to_private
    assert settings(**live, DIALER_WEBHOOK_ALLOW_PRIVATE="true").webhooks_to_private
    assert not settings(DIALER_WEBHOOK_ALLOW_PRIVATE="false").webhooks_to_private
    with pytest.raises(ConfigError, match="webhook_allow_private"):
        settings(DIALER_WEBHOOK_ALLOW_PRIVATE="maybe")


# -- delivery ------------------------------------------------------------------------------


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[Request]]]:
    got: list[Request] = []

    async def hook(request: Request) -> Response:
        await request.body()
        got.append(request)
        return Response(status_code=204)

    async with serve(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as base:
        yield base, got


async def deliver(pool: asyncpg.Pool, url: str, allow_private: bool) -> asyncpg.Record:
    """Queue one webhook for ``url``, run one delivery pass, return the outbox row."""
    clock = FakeClock(datetime(2026, 6, 1, 12, 0, tzinfo=UTC))
    sender = WebhookSender(pool, b"secret", clock, allow_private=allow_private)
    try:
        async with pool.acquire() as conn:
            await conn.execute("INSERT INTO webhook_outbox (batch_id, call_id, url, body, next_attempt_at, "
                               "created_at) VALUES (gen_random_uuid(), 1, $1, '{}', $2, $2)", url, clock.now())
        assert await sender.deliver_due() == 1
        async with pool.acquire() as conn:
            row = await conn.fetchrow("SELECT state, attempts, last_error FROM webhook_outbox")
        assert await sender.deliver_due() == 0  # refused or delivered: nothing left to retry now
        return row
    finally:
        await sender.close()


@pytest.mark.parametrize(
    ("host", "error"),
    [
        ("127.1", "refused: 127.1 resolves to 127.0.0.1, a loopback address: "),  # via getaddrinfo
        ("localhost", "refused: localhost is a loopback address: "),
        ("127.0.0.1", "refused: 127.0.0.1 is a loopback address: "),
    ],
)
async def test_a_host_that_is_or_resolves_to_loopback_fails_at_once(
        pool: asyncpg.Pool, receiver: tuple[str, list[Request]], host: str, error: str) -> None:
    base, got = receiver
    port = httpx.URL(base).port
    row = await deliver(pool, f"http://{host}:{port}/hook", allow_private=False)
    assert (row["state"], row["attempts"]) == ("failed", 1)  # not retried
    assert row["last_error"].startswith(error)
    assert row["last_error"].endswith("result webhooks go only to public addresses "
                                      "(see webhook_allow_private)")
    assert got == []


async def test_cloud_metadata_and_bad_urls_fail_at_once(pool: asyncpg.Pool) -> None:
    row = await deliver(pool, "http://169.254.169.254/latest/meta-data/", allow_private=False)
    assert (row["state"], row["attempts"]) == ("failed", 1)
    assert row["last_error"].startswith("refused: 169.254.169.254 is a link-local address")
    async with pool.acquire() as conn:
        await conn.execute("DELETE FROM webhook_outbox")
    row = await deliver(pool, "http://[::1/hook", allow_private=True)
    assert row["state"] == "failed" and row["last_error"].startswith("refused: not a valid URL")


async def test_allowed_private_delivery_keeps_the_host_header(
        pool: asyncpg.Pool, receiver: tuple[str, list[Request]]) -> None:
    base, got = receiver
    port = httpx.URL(base).port
    row = await deliver(pool, f"http://localhost:{port}/hook", allow_private=True)
    assert row["state"] == "delivered"
    [request] = got
    assert request.headers["host"] == f"localhost:{port}"
    assert ipaddress.ip_address(request.client.host).is_loopback  # type: ignore[union-attr]


from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import pytest

from dialer.clock import FakeClock
from dialer.http.app import create_app
from dialer.http.context import AppContext
from tests.conftest import TOKEN

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def leads(*numbers: str, **extra: Any) -> dict[str, Any]:
    return {"target": "sales", "leads": [{"number": n, **extra} for n in numbers]}


async def test_post_batch_json_and_read_it_back(api: httpx.AsyncClient) -> None:
    body = {
        "target": "sales",
        "leads": [
            {"number": "+14155550100", "priority": 5, "external_id": "crm-1",
             "fields": {"name": "Ann", "plan": "gold"}, "agents": ["alice"]},
            {"number": "(415) 555-0101", "external_id": "crm-2"},
            {"number": "12"},
            {"number": "+14155550100", "priority": 1},
        ],
        "result_webhook_url": "https://crm.example/hook",
    }
    r = await api.post("/v1/batches", json=body, headers=AUTH)
    assert r.status_code == 202, r.text
    out = r.json()
    assert out["accepted"] == 2
    assert out["duplicates"] == 1 and out["dnc"] == 0
    assert out["rejected"] == [{"index": 2, "reason": "number: not a valid phone number for region US"}]

    b = (await api.get(f"/v1/batches/{out['batch_id']}", headers=AUTH)).json()
    assert b["state"] == "ingested"
    assert b["counts"] == {"rows": 4, "accepted": 2, "invalid": 1, "duplicate": 1, "dnc": 0}
    assert b["calls_by_state"] == {"pending": 2}

    page = (await api.get(f"/v1/batches/{out['batch_id']}/calls", headers=AUTH)).json()
    numbers = {c["number"]: c for c in page["calls"]}
    assert set(numbers) == {"+14155550100", "+14155550101"}
    assert numbers["+14155550100"]["priority"] == 5  # the higher priority row was kept

    found = (await api.get("/v1/calls", params={"external_id": "crm-1"}, headers=AUTH)).json()
    assert len(found["calls"]) == 1
    call = found["calls"][0]
    assert call["fields"] == {"name": "Ann", "plan": "gold"} and call["agents"] == ["alice"]
    one = await api.get(f"/v1/calls/{call['id']}", headers=AUTH)
    assert one.status_code == 200 and one.json()["number"] == "+14155550100"


async def post_csv(api: httpx.AsyncClient, csv: str) -> dict[str, Any]:
    r = await api.post("/v1/batches?target=sales", content=csv.encode(),
                       headers={**AUTH, "Content-Type": "text/csv"})
    assert r.status_code == 202, r.text
    out: dict[str, Any] = r.json()
    return out


async def test_post_batch_csv(api: httpx.AsyncClient) -> None:
    # a blank line and a quoted field over two lines: the index counts records, not lines
    csv = ('Phone;Priority;Lead_ID;Company\n+14155550100;3;a1;"Acme\nInc"\n\nnope;1;a2;Bad\n'
           "+14155550101;1;a3;Ok\n")
    out = await post_csv(api, csv)
    assert out["accepted"] == 2
    # as a JSON body's rejects (SPEC §4: "index"), and the file line
    assert out["rejected"] == [{"index": 1, "line": 5, "reason": "number: not a phone number "
                                "(the string supplied did not seem to be a phone number)"}]


async def test_a_rejected_multi_line_csv_record_is_one_index(api: httpx.AsyncClient) -> None:
    """Each line of a malformed record spanning lines is reported, but under the record's
    index: the records after it keep theirs (they were counted one per line)."""
    csv = ('number,note\n+14155550100,"a\nb\nc" x\nnope,y\n+14155550101,"wrong\ncount",z\n'
           "+14155550102,ok\n")
    out = await post_csv(api, csv)
    assert out["accepted"] == 1
    assert [(x["index"], x["line"]) for x in out["rejected"]] == [(0, 2), (0, 3), (0, 4), (1, 5), (2, 6), (2, 7)]
    assert out["rejected"][1]["reason"].startswith("malformed CSV: inside the row of line 2")
    assert out["rejected"][4]["reason"].startswith("3 values but the header has 2 columns")
    assert out["rejected"][5]["reason"].startswith("inside the row of line 6")


async def test_cursor_paging_walks_every_call(api: httpx.AsyncClient) -> None:
    nums = [f"+1415555{i:04d}" for i in range(100, 350)]
    bid = (await api.post("/v1/batches", json=leads(*nums), headers=AUTH)).json()["batch_id"]
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 60}
        if cursor:
            params["cursor"] = cursor
        page = (await api.get(f"/v1/batches/{bid}/calls", params=params, headers=AUTH)).json()
        seen += [c["number"] for c in page["calls"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert sorted(seen) == sorted(nums)


async def test_idempotency_key_replays_first_answer(api: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    h = {**AUTH, "Idempotency-Key": "k-123"}
    first = await api.post("/v1/batches", json=leads("+14155550100"), headers=h)
    again = await api.post("/v1/batches", json=leads("+14155550100"), headers=h)
    assert first.status_code == again.status_code == 202
    assert first.json() == again.json()
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM batches") == 1
    other = await api.post("/v1/batches", json=leads("+14155550199"), headers=h)
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "conflict"


async def test_dedupe_window_and_dnc(api: httpx.AsyncClient, clock: FakeClock) -> None:
    await api.post("/v1/batches", json=leads("+14155550100"), headers=AUTH)
    r = await api.post("/v1/dnc", json={"numbers": ["+14155550111", "(415) 555-0112", "x"]}, headers=AUTH)
    assert r.status_code == 200
    assert r.json()["added"] == 2 and r.json()["invalid"][0]["index"] == 2
    out = (await api.post("/v1/batches", json=leads("+14155550100", "+14155550111", "4155550112",
                                                    "+14155550113"), headers=AUTH)).json()
    assert out["accepted"] == 1 and out["duplicates"] == 1 and out["dnc"] == 2
    d = await api.delete("/v1/dnc/+14155550111", headers=AUTH)
    assert d.status_code == 204
    assert (await api.delete("/v1/dnc/+14155550111", headers=AUTH)).status_code == 404


async def test_the_answer_names_the_leads_counted_as_duplicate_or_dnc(api: httpx.AsyncClient) -> None:
    """SPEC §4: nothing dropped silently. The counts alone left a CRM unable to tell which
    of its leads will not be dialed (the calls API does not list intake outcomes)."""
    await api.post("/v1/dnc", json={"numbers": ["+14155550190"]}, headers=AUTH)
    body = {"leads": [{"number": "+14155550191", "external_id": "d1"},
                      {"number": "+14155550191", "external_id": "d2", "priority": 9},
                      {"number": "+14155550190", "external_id": "d3"},
                      {"number": "x", "external_id": "d4"}]}
    out = (await api.post("/v1/batches", json=body, headers=AUTH)).json()
    assert out["accepted"] == 1 and out["duplicates"] == 1 and out["dnc"] == 1
    assert [r["index"] for r in out["rejected"]] == [3]
    assert out["not_dialed"] == [
        {"index": 0, "outcome": "duplicate", "reason": "duplicate of line 1 in this batch"},
        {"index": 2, "outcome": "dnc", "reason": "number is on the do-not-call list"},
    ]
    csv = "number,external_id\n+14155550192,c1\n+14155550190,c2\n"
    out = (await api.post("/v1/batches?target=sales", content=csv,
                          headers={**AUTH, "content-type": "text/csv"})).json()
    assert out["not_dialed"] == [{"index": 1, "line": 3, "outcome": "dnc", "reason": "number is on the do-not-call list"}]


@pytest.mark.parametrize(("expires_at", "needle"), [
    (0, "expires_at: Value error, expected an ISO 8601 date or time string"),
    (True, "expected an ISO 8601 date or time string"),
    ("someday", "'someday' is not an ISO 8601 date or time"),
    ("2001-01-01T00:00:00Z", "expires_at: in the past"),
])
async def test_a_dnc_expiry_that_protects_no_one_is_refused(api: httpx.AsyncClient, expires_at: object,
                                                            needle: str) -> None:
    """An expiry of 0 (read as 1970) or a past time used to answer "added" while the
    number stayed dialable."""
    r = await api.post("/v1/dnc", json={"numbers": ["+14155550177"], "expires_at": expires_at}, headers=AUTH)
    assert r.status_code == 422 and needle in r.json()["error"]["message"], r.text
    out = (await api.post("/v1/batches", json=leads("+14155550177"), headers=AUTH)).json()
    assert out["accepted"] == 1 and out["dnc"] == 0  # nothing was listed


async def test_a_dnc_expiry_is_a_date_or_a_time_no_offset_utc(api: httpx.AsyncClient, pool: asyncpg.Pool,
                                                             clock: FakeClock) -> None:
    year = clock.now().year + 1
    for number, given, stored in (("+14155550178", f"{year}-06-30", f"{year}-06-30T00:00:00+00:00"),
                                  ("+14155550179", f"{year}-06-30T18:00:00+02:00", f"{year}-06-30T16:00:00+00:00")):
        r = await api.post("/v1/dnc", json={"numbers": [number], "expires_at": given}, headers=AUTH)
        assert r.status_code == 200 and r.json()["added"] == 1, r.text
        async with pool.acquire() as conn:
            got = await conn.fetchval("SELECT expires_at FROM dnc WHERE e164 = $1", number)
        assert got.isoformat() == stored


async def test_a_duplicate_of_a_call_that_was_never_dialed_says_so(api: httpx.AsyncClient, pool: asyncpg.Pool,
                                                                   clock: FakeClock) -> None:
    """A cancelled batch's calls ended within the window too (SPEC: "one ended within
    dedupe_window_h"), but the reason must not claim the customer was called."""
    first = (await api.post("/v1/batches", json=leads("+14155550100", "+14155550101"), headers=AUTH)).json()
    async with pool.acquire() as conn:  # the second one was dialed and not answered
        await conn.execute("UPDATE calls SET state = 'no_answer', submitted_at = $1, ended_at = $1 "
                           "WHERE e164 = '+14155550101'", clock.now())
    assert (await api.post(f"/v1/batches/{first['batch_id']}/cancel", headers=AUTH)).status_code == 200
    again = (await api.post("/v1/batches", json=leads("+14155550100", "+14155550101"), headers=AUTH)).json()
    assert again["duplicates"] == 2
    async with pool.acquire() as conn:
        old = {r["e164"]: r["id"] for r in await conn.fetch("SELECT e164, id FROM calls WHERE batch_id = $1",
                                                            UUID(first["batch_id"]))}
        why = {r["e164"]: r["reason"] for r in await conn.fetch("SELECT e164, reason FROM calls WHERE batch_id = $1",
                                                                UUID(again["batch_id"]))}
    assert why == {
        "+14155550100": f"number had a call that ended undialed within the dedupe window (call {old['+14155550100']})",
        "+14155550101": f"number was called within the dedupe window (call {old['+14155550101']})"}
    # a lead's second number is checked on its own, in the same words
    third = (await api.post("/v1/batches", json={"target": "sales", "leads": [
        {"number": "+14155550102", "number2": "+14155550100"}]}, headers=AUTH)).json()
    assert third["rejected"] == [{"index": 0, "field": "number2", "reason": "number2: number had a call that "
                                  f"ended undialed within the dedupe window (call {old['+14155550100']})"}]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"target": "sales"}, "leads"),
        ({"leads": [{"priority": 1}]}, "leads[0].number"),
        ({"leads": [{"number": "+14155550100", "priority": "high"}]}, "leads[0].priority"),
        ({"leads": [{"number": "+14155550100", "colour": {"r": 1}}]}, "leads[0].colour"),
        ({"leads": [], "result_webhook_url": "ftp://x"}, "result_webhook_url"),
    ],
)
async def test_malformed_body_is_422_naming_the_field(api: httpx.AsyncClient, body: Any, field: str) -> None:
    r = await api.post("/v1/batches", json=body, headers=AUTH)
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "invalid" and err["message"].startswith(field)


async def test_unparsable_json_is_422(api: httpx.AsyncClient) -> None:
    r = await api.post("/v1/batches", content=b'{"leads": [', headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 422
    assert "not valid JSON" in r.json()["error"]["message"]


async def test_unknown_target_is_422(api: httpx.AsyncClient) -> None:
    r = await api.post("/v1/batches", json={"target": "nope", "leads": []}, headers=AUTH)
    assert r.status_code == 422 and "unknown target" in r.json()["error"]["message"]


async def test_limits_are_413(pool: asyncpg.Pool, make_settings: Any, clock: FakeClock) -> None:
    s = make_settings(max_body_mb=0.01, max_batch_leads=3)
    app = create_app(AppContext(settings=s, pool=pool, clock=clock))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as api:
        r = await api.post("/v1/batches", json=leads(*[f"+1415555{i:04d}" for i in range(100, 104)]),
                           headers=AUTH)
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
        r = await api.post("/v1/batches", content=b"number\n" + b"+14155550100\n" * 2000,
                           headers={**AUTH, "Content-Type": "text/csv"})
        assert r.status_code == 413


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/batches"),
        ("GET", "/v1/batches/00000000-0000-0000-0000-000000000000"),
        ("GET", "/v1/batches/00000000-0000-0000-0000-000000000000/calls"),
        ("GET", "/v1/calls/1"),
        ("GET", "/v1/calls?external_id=x"),
        ("POST", "/v1/dnc"),
        ("DELETE", "/v1/dnc/+14155550100"),
        ("GET", "/v1/targets/sales/figures"),
        ("GET", "/v1/targets/sales/waiting"),
        ("GET", "/v1/batches/00000000-0000-0000-0000-000000000000/figures"),
    ],
)
@pytest.mark.parametrize("auth", [None, "Bearer wrong-token", "Basic dGVzdA==", "Bearer "])
async def test_every_v1_route_needs_the_token(api: httpx.AsyncClient, method: str, path: str,
                                              auth: str | None) -> None:
    headers = {"Authorization": auth} if auth else {}
    r = await api.request(method, path, headers=headers, json={"leads": []})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "unauthorized"
    assert r.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(("method", "path", "with_token"), [
    ("GET", "/v1/no-such-thing", 404), ("GET", "/v1", 404), ("DELETE", "/v1/batches/x", 405),
    ("PUT", "/v1/dnc", 405),
])
async def test_a_v1_path_or_method_that_does_not_exist_is_401_without_the_token(
        api: httpx.AsyncClient, method: str, path: str, with_token: int) -> None:
    # SPEC §4: the token on every /v1/* call; the API's shape is not shown to whoever asks
    r = await api.request(method, path)
    assert (r.status_code, r.json()["error"]["code"]) == (401, "unauthorized"), r.text
    assert r.headers["www-authenticate"] == "Bearer"
    assert (await api.request(method, path, headers=AUTH)).status_code == with_token


async def test_health_and_openapi(api: httpx.AsyncClient) -> None:
    assert (await api.get("/healthz")).json()["status"] == "ok"
    ready = await api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["migrations"] == "ok"
    spec = (await api.get("/openapi.json")).json()
    assert "/v1/batches" in spec["paths"]
    assert "BatchIn" in spec["components"]["schemas"]
    assert (await api.get("/docs")).status_code == 200


async def test_the_openapi_document_describes_what_the_api_takes_and_answers(api: httpx.AsyncClient) -> None:
    spec = (await api.get("/openapi.json")).json()
    post = spec["paths"]["/v1/batches"]["post"]
    # the README's own example file matches the text/csv body's schema (it demanded a
    # header of the number column alone)
    csv_header = re.compile(post["requestBody"]["content"]["text/csv"]["schema"]["pattern"])
    example = (Path(__file__).parents[2] / "examples" / "leads.csv").read_text()
    assert csv_header.match(example)
    for text in ("phone_number;name\n+14155550100\n", 'name\t"Mobile"\n1\n', "\ufeffNUMBER\r\n1\r\n"):
        assert csv_header.match(text), text
    for text in ("name,company\n", "numbers\n1\n"):
        assert not csv_header.match(text), text
    # a 503 (database away, shutting down) is documented, with its Retry-After, on every /v1 operation
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if path.startswith("/v1/"):
                assert "Retry-After" in op["responses"]["503"]["headers"], (method, path)
    # a schedule time the endpoint cannot read is outside the schema
    at = re.compile(spec["components"]["schemas"]["ScheduleIn"]["properties"]["at"]["pattern"])
    assert at.match("2026-12-01T16:00") and at.match("2026-12-01 16:00:30.5+05:30")
    assert not any(at.match(t) for t in ("0000-00-00T00:00", "2026-13-01T10:00", "2026-12-01T24:00"))


async def test_not_found_uses_error_shape(api: httpx.AsyncClient) -> None:
    r = await api.get("/v1/batches/00000000-0000-0000-0000-000000000000", headers=AUTH)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await api.get("/v1/calls/999", headers=AUTH)
    assert r.status_code == 404


async def test_dnc_add_cancels_pending_calls_and_cancel_batch(api: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    out = (await api.post("/v1/batches", json=leads("+14155550100", "+14155550101", "+14155550102"),
                          headers=AUTH)).json()
    r = await api.post("/v1/dnc", json={"numbers": ["+14155550100"]}, headers=AUTH)
    assert r.status_code == 200
    async with pool.acquire() as conn:
        st = dict(await conn.fetch("SELECT e164, state FROM calls"))
    assert st["+14155550100"] == "cancelled" and st["+14155550101"] == "pending"
    c = await api.post(f"/v1/batches/{out['batch_id']}/cancel", headers=AUTH)
    assert c.status_code == 200 and c.json()["cancelled"] == 2
    b = (await api.get(f"/v1/batches/{out['batch_id']}", headers=AUTH)).json()
    assert b["state"] == "cancelled" and b["calls_by_state"] == {"cancelled": 3}
    call = (await api.get("/v1/calls", params={"external_id": "x"}, headers=AUTH)).json()
    assert call == {"calls": []}


@pytest.mark.parametrize(
    ("url", "sandbox", "allow", "status"),
    [
        ("http://127.0.0.1:9000/hook", False, None, 422),
        ("http://169.254.169.254/latest/meta-data/", False, None, 422),
        ("http://[fd12::1]/hook", False, None, 422),
        ("http://localhost/hook", False, None, 422),
        ("https://crm.example/hook", False, None, 202),
        ("http://127.0.0.1:9000/hook", False, True, 202),  # webhook_allow_private = true
        ("http://127.0.0.1:9000/hook", True, None, 202),  # sandbox mode allows it by default
        ("http://127.0.0.1:9000/hook", True, False, 422),
    ],
)
async def test_result_webhook_url_must_be_a_public_address(
        pool: asyncpg.Pool, make_settings: Any, clock: FakeClock, url: str, sandbox: bool,
        allow: bool | None, status: int) -> None:
    s = make_settings(ryng_base_url=None if sandbox else "https://acme.ryng.example",
                      webhook_allow_private=allow)
    app = create_app(AppContext(settings=s, pool=pool, clock=clock))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as api:
        r = await api.post("/v1/batches", json={**leads("+14155550100"), "result_webhook_url": url},
                           headers=AUTH)
    assert r.status_code == status, r.text
    if status == 422:
        err = r.json()["error"]
        assert err["code"] == "invalid" and err["message"].startswith("result_webhook_url: ")
        assert "address: result webhooks go only to public addresses" in err["message"]
        assert err["details"] == [{"field": "result_webhook_url", "message": err["message"][20:]}]
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM batches") == 0


async def test_a_misspelt_or_repeated_query_parameter_is_refused(api: httpx.AsyncClient) -> None:
    r = await api.get("/v1/targets/sales/figures?window=24", headers=AUTH)
    assert r.status_code == 422 and "unknown query parameter 'window'" in r.json()["error"]["message"]
    r = await api.get("/v1/callbacks?agent=bob&agent=alice", headers=AUTH)
    assert r.status_code == 422 and r.json()["error"]["message"] == "query parameter 'agent' given more than once"
    assert (await api.get("/v1/targets/sales/waiting", headers=AUTH)).status_code == 200


async def test_a_custom_field_integer_past_64_bits_is_kept_exactly(api: httpx.AsyncClient) -> None:
    """It was read as a float: 12345678901234567890123 was stored as 12345678901234567741440."""
    body = b'{"target": "sales", "leads": [{"number": "+14155550130", "external_id": "crm-big", ' \
           b'"crm_id": 12345678901234567890123, "fields": {"ref": -98765432109876543210}}]}'
    r = await api.post("/v1/batches", content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 202 and r.json()["accepted"] == 1, r.text
    call = (await api.get("/v1/calls?external_id=crm-big", headers=AUTH)).json()
    call = call["calls"][0] if "calls" in call else call
    assert call["fields"] == {"crm_id": "12345678901234567890123", "ref": "-98765432109876543210"}


async def test_json_nested_too_deeply_is_422(api: httpx.AsyncClient) -> None:
    body = b'{"target": "sales", "leads": [{"number": "+14155550131", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}]}"
    r = await api.post("/v1/batches", content=body, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 422 and "not valid JSON" in r.text, r.text


async def test_json_leads_take_the_column_aliases_and_other_keys_as_custom_fields(api: httpx.AsyncClient) -> None:
    """SPEC §4 "Columns / fields (case-insensitive, aliases)": a lead posted as JSON is
    keyed as a file's columns are."""
    body = {"target": "sales", "leads": [
        {"Phone": "+14155550110", "agentsAssigned": "alice;bob", "lead_id": "crm-9", "tz": "America/Chicago",
         "alt_number": "+14155550111", "number6": "+14155550112", "first_name": "Ann",
         "fields": {"plan": "gold"}},
    ]}
    r = await api.post("/v1/batches", json=body, headers=AUTH)
    assert r.status_code == 202, r.text
    assert r.json()["accepted"] == 1 and r.json()["rejected"] == []
    call = (await api.get("/v1/calls?external_id=crm-9", headers=AUTH)).json()
    call = call["calls"][0] if "calls" in call else call
    assert call["number"] == "+14155550110" and call["fields"] == {"first_name": "Ann", "plan": "gold"}
    assert call["timezone"] == "America/Chicago" and sorted(call["agents"]) == ["alice", "bob"]
    # "Fields" in any case holds the custom fields; more numbers as one separated string
    r = await api.post("/v1/batches", json={"target": "sales", "leads": [
        {"number": "+14155550120", "Fields": {"plan": "silver"}, "phones": "+14155550121;+14155550122",
         "external_id": "crm-10"}]}, headers=AUTH)
    assert r.status_code == 202 and r.json()["accepted"] == 1, r.text
    call = (await api.get("/v1/calls?external_id=crm-10", headers=AUTH)).json()
    call = call["calls"][0] if "calls" in call else call
    assert call["fields"] == {"plan": "silver"}
    # two keys for one field: refused, naming both
    r = await api.post("/v1/batches", json=leads("+14155550113", phone="+14155550114"), headers=AUTH)
    assert r.status_code == 422 and "'number' and 'phone' both mean number" in r.text, r.text
    # a custom field must be a scalar, as in "fields"
    r = await api.post("/v1/batches", json=leads("+14155550115", extra={"a": 1}), headers=AUTH)
    assert r.status_code == 422, r.text


async def test_a_body_over_a_small_limit_names_it_in_kb(api: httpx.AsyncClient) -> None:
    """The schedule body's limit is 64 KB: the message said "over the 0 MB limit"."""
    r = await api.post("/v1/calls/1/schedule", content=b'{"at": "' + b"x" * 70_000 + b'"}',
                       headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["message"] == "body is over the 64 KB limit", r.text


@pytest.mark.parametrize(("path", "ctype", "send"), [
    ("/v1/dnc", "application/xml", "send application/json or text/plain or text/csv"),
    ("/v1/calls/1/schedule", "text/plain", "send application/json"),
    ("/v1/batches", "application/xml", "send application/json or text/csv"),
])
async def test_a_body_of_a_type_the_route_does_not_take_is_refused_naming_what_to_send(
        api: httpx.AsyncClient, path: str, ctype: str, send: str) -> None:
    """The same answer on every route (/v1/dnc read XML as JSON: "body is not valid JSON";
    the schedule route read a text/plain body as JSON)."""
    r = await api.post(path, content=b'{"numbers": ["+14155550100"], "at": "2026-12-01T16:00"}',
                       headers={**AUTH, "content-type": ctype})
    assert r.status_code == 422 and f"content-type {ctype!r} is not supported: {send}" in r.text, r.text


async def test_a_batch_whose_target_stays_locked_past_the_wait_is_503_and_stores_nothing(
        api: httpx.AsyncClient, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another batch of the target being finalised holds its dedupe lock longer than a lock
    may be waited for (30 s; here 0.2 s): the request is answered as retryable, not a 500."""
    from dialer.store import limits

    monkeypatch.setattr(limits, "BULK_BASE_S", 0.4)  # a lock is waited for half of it
    async with pool.acquire() as holder:
        await holder.execute("SELECT pg_advisory_lock(1, hashtext('sales'))")
        try:
            r = await api.post("/v1/batches", json=leads("+14155550100"), headers=AUTH)
        finally:
            await holder.execute("SELECT pg_advisory_unlock(1, hashtext('sales'))")
        assert r.status_code == 503 and r.headers["Retry-After"] == "5"
        assert r.json()["error"]["code"] == "busy" and "'sales'" in r.json()["error"]["message"]
        assert await holder.fetchval("SELECT count(*) FROM batches") == 0
    r = await api.post("/v1/batches", json=leads("+14155550100"), headers=AUTH)
    assert r.status_code == 202 and r.json()["accepted"] == 1


async def test_a_dnc_file_whose_lock_stays_held_past_the_wait_is_503_and_stores_nothing(
        api: httpx.AsyncClient, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch's finalise holds its target's dedupe lock longer than the import may wait for
    it (30 s; here 0.2 s): the file is answered as retryable (it was a 503 only once the
    pool's 60 s client timeout ended the call), and nothing of it is listed or cancelled."""
    from dialer.store import limits

    assert (await api.post("/v1/batches", json=leads("+14155550100"), headers=AUTH)).status_code == 202
    monkeypatch.setattr(limits, "BULK_BASE_S", 0.4)  # a lock is waited for half of it
    body, text = b"+14155550100\n+14155550101\n", {**AUTH, "Content-Type": "text/plain"}
    async with pool.acquire() as holder:
        await holder.execute("SELECT pg_advisory_lock(1, hashtext('sales'))")
        try:
            r = await api.post("/v1/dnc", content=body, headers=text)
        finally:
            await holder.execute("SELECT pg_advisory_unlock(1, hashtext('sales'))")
        assert r.status_code == 503 and r.headers["Retry-After"] == "5", r.text
        assert r.json()["error"]["code"] == "busy" and "nothing of it was stored" in r.json()["error"]["message"]
        assert await holder.fetchval("SELECT count(*) FROM dnc") == 0
        assert await holder.fetchval("SELECT state FROM calls") == "pending"
    r = await api.post("/v1/dnc", content=body, headers=text)
    assert r.status_code == 200 and r.json()["added"] == 2
    assert await pool.fetchval("SELECT state FROM calls") == "cancelled"


def many(n: int) -> list[str]:
    return [f"+1415{2000000 + i:07d}" for i in range(n)]


@pytest.fixture
def no_time(monkeypatch: pytest.MonkeyPatch) -> Callable[[bool], None]:
    """``no_time(True)``: a step over a whole input may run 1 ms (no step over thousands of rows
    runs in it: what a big input meets on an overloaded database at 60 s plus 1 ms a row);
    ``no_time(False)``: the limits as they are."""
    from dialer.store import limits

    base, per_row = limits.BULK_BASE_S, limits.BULK_ROW_S

    def set_(on: bool) -> None:
        monkeypatch.setattr(limits, "BULK_BASE_S", 0.001 if on else base)
        monkeypatch.setattr(limits, "BULK_ROW_S", 0.0 if on else per_row)

    return set_


async def test_a_batch_whose_settling_runs_past_its_time_limit_is_503_and_stores_nothing(
        api: httpx.AsyncClient, pool: asyncpg.Pool, no_time: Callable[[bool], None]) -> None:
    """Even the time a batch's size allows its finalise can run out: the request is answered as
    retryable, saying so (it was a 500), nothing of it is stored, not even its Idempotency-Key,
    and the API goes on serving: the same request again goes through."""
    body, headers = leads(*many(5000)), {**AUTH, "Idempotency-Key": "crm-batch-7"}
    no_time(True)
    r = await api.post("/v1/batches", json=body, headers=headers)
    assert r.status_code == 503 and r.headers["Retry-After"] == "5", r.text
    assert r.json() == {"error": {
        "code": "timed_out",
        "message": "settling the batch was stopped: one of its steps ran past the 0.001 s its 5000 leads "
                   "allow; nothing of it was stored: retry later, or send it in smaller batches",
        "details": {"target": "sales", "limit_s": 0.001}}}
    for table in ("batches", "calls", "idempotency_keys"):
        assert await pool.fetchval(f"SELECT count(*) FROM {table}") == 0, table
    assert (await api.get("/healthz")).status_code == 200
    no_time(False)
    r = await api.post("/v1/batches", json=body, headers=headers)
    assert r.status_code == 202 and r.json()["accepted"] == 5000, r.text
    assert await pool.fetchval("SELECT count(*) FROM calls WHERE state = 'pending'") == 5000


async def test_a_dnc_file_whose_import_runs_past_its_time_limit_is_503_and_stores_nothing(
        api: httpx.AsyncClient, pool: asyncpg.Pool, no_time: Callable[[bool], None]) -> None:
    """Even the time a file's size allows its merge and cancel can run out: the file is answered
    as retryable, saying so (it was a 500), nothing of it is listed or cancelled, and the API
    goes on serving: the same file again is imported."""
    assert (await api.post("/v1/batches", json=leads("+14152000001"), headers=AUTH)).status_code == 202
    body, text = "".join(f"{n}\n" for n in many(5000)).encode(), {**AUTH, "Content-Type": "text/plain"}
    no_time(True)
    r = await api.post("/v1/dnc", content=body, headers=text)
    assert r.status_code == 503 and r.headers["Retry-After"] == "5", r.text
    assert r.json() == {"error": {
        "code": "timed_out",
        "message": "the do-not-call import was stopped: one of its steps ran past the 0.001 s its 5000 "
                   "numbers allow; nothing of it was stored: retry later, or import the file in smaller parts",
        "details": {"limit_s": 0.001}}}
    assert await pool.fetchval("SELECT count(*) FROM dnc") == 0
    assert await pool.fetchval("SELECT state FROM calls") == "pending"
    assert (await api.get("/healthz")).status_code == 200
    no_time(False)
    r = await api.post("/v1/dnc", content=body, headers=text)
    assert r.status_code == 200 and r.json()["added"] == 5000, r.text
    assert await pool.fetchval("SELECT state FROM calls") == "cancelled"

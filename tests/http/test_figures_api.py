"""The figures routes: bearer auth, 404 in the standard error shape, the documented shape,
and the very figures of a campaign made through the real paths."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from dialer.http.app import create_app
from dialer.http.context import AppContext
from tests.conftest import TOKEN
from tests.results.test_figures import Campaign, campaign  # noqa: F401 (a fixture)

AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_unknown_target_or_batch_is_404_in_the_error_shape(api: httpx.AsyncClient) -> None:
    r = await api.get("/v1/targets/nope/figures", headers=AUTH)
    assert r.status_code == 404
    assert r.json() == {"error": {"code": "not_found", "message": "no target 'nope'", "details": None}}
    r = await api.get("/v1/batches/00000000-0000-0000-0000-000000000000/figures", headers=AUTH)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await api.get("/v1/batches/not-a-uuid/figures", headers=AUTH)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"


@pytest.mark.parametrize("window_h", ["0", "745", "x"])
async def test_window_out_of_range_is_422_naming_it(api: httpx.AsyncClient, window_h: str) -> None:
    r = await api.get(f"/v1/targets/sales/figures?window_h={window_h}", headers=AUTH)
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "query.window_h"
    r = await api.get("/v1/targets/sales/figures?windowh=2", headers=AUTH)  # a misspelt parameter
    assert r.status_code == 422


async def test_a_fresh_batch_has_its_leads_and_no_pace(api: httpx.AsyncClient) -> None:
    r = await api.post("/v1/batches", headers=AUTH, json={
        "target": "sales", "leads": [{"number": "+14155550100"}, {"number": "+14155550101"}, {"number": "1"}]})
    bid = r.json()["batch_id"]
    body = (await api.get(f"/v1/batches/{bid}/figures", headers=AUTH)).json()
    assert body["scope"] == "batch" and body["batch_id"] == bid and body["target"] == "sales"
    assert (body["leads"], body["attempts"], body["penetration"], body["contact_rate"]) == (2, 0, 0.0, None)
    assert len(body["answer_rate_by_hour"]) == 24
    assert body["answer_rate_by_hour"][0] == {"hour": 0, "attempts": 0, "answered": 0, "answer_rate": None}
    assert body["exhaustion"]["remaining"] == 2 and body["exhaustion"]["seconds"] is None
    assert "nothing was sent" in body["exhaustion"]["reason"]
    t = (await api.get("/v1/targets/sales/figures?window_h=1", headers=AUTH)).json()
    assert (t["scope"], t["window_h"], t["batches"], t["leads"]) == ("target", 1, 1, 2)
    spec = (await api.get("/openapi.json")).json()
    for path in ("/v1/targets/{name}/figures", "/v1/batches/{batch_id}/figures"):
        op = spec["paths"][path]["get"]
        assert op["security"] == [{"bearer": []}]
        assert op["responses"]["200"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/FiguresOut"}
        assert op["responses"]["404"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorOut"}


async def test_the_api_gives_the_campaign_figures(campaign: Campaign) -> None:  # noqa: F811
    st = campaign.st
    app = create_app(AppContext(settings=st.settings, pool=st.pool, clock=campaign.clock))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as api:
        t = (await api.get("/v1/targets/sales/figures", headers=AUTH)).json()
        b = (await api.get(f"/v1/batches/{campaign.ny}/figures", headers=AUTH)).json()
    expect: dict[str, Any] = {"batches": 3, "leads": 10, "attempts": 7, "leads_attempted": 6, "answered": 4,
                              "penetration": 0.6, "contact_rate": 4 / 7, "attempts_per_lead": 7 / 6,
                              "talk_mean_s": 60.0, "talk_reported": 3, "window_h": 24}
    assert {k: t[k] for k in expect} == expect
    assert {h["hour"]: (h["attempts"], h["answered"]) for h in t["answer_rate_by_hour"] if h["attempts"]} == {
        7: (3, 1), 10: (3, 2), 12: (1, 1)}
    assert t["exhaustion"] == {"remaining": 4, "sent_recently": 1, "window_s": 900, "send_rate_per_min": 1 / 15,
                               "seconds": 3600.0, "at": "2026-12-01T18:05:00Z", "reason": None}
    assert (b["leads"], b["attempts"], b["contact_rate"], b["talk_mean_s"]) == (3, 4, 3 / 4, 60.0)
    assert b["exhaustion"]["seconds"] == 0.0 and b["exhaustion"]["reason"] == "nothing is waiting to be sent"

"""Why isn't it dialing, on the console (in-process): each target's card on the Targets page
has a small table of its waiting calls by what holds them, with when each clears — the
API's numbers (``GET /v1/targets/{name}/waiting``)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import asyncpg
import httpx

from dialer.clock import FakeClock
from dialer.dispatch.targets import set_paused
from dialer.http.app import create_app
from dialer.http.context import AppContext
from tests.dispatch.test_waiting import BASE, NOON
from tests.stack import running_stack
from tests.ui.conftest import BASE as URL
from tests.ui.conftest import csrf_of, log_in, table


async def test_the_targets_page_shows_why_each_target_waits(pool: asyncpg.Pool, make_settings: Any) -> None:
    clock = FakeClock(NOON)
    targets = {"sales": BASE, "stopped": {**BASE, "queue_id": "47"},
               "late": {**BASE, "queue_id": "43", "calling_hours": "22:00-23:00"}, "idle": {**BASE, "queue_id": "49"}}
    async with running_stack(pool, make_settings, clock=clock, targets=targets, default_target="sales") as st:
        st.sandbox.configure(time_scale=1000.0, agent_pickup_s=1000.0)
        await st.post([f"+1312555{i:04d}" for i in range(100, 108)])
        await st.post(["+13125550200"], target="late")
        await st.post(["+13125550204", "+13125550205"], target="stopped")
        await set_paused(pool, "stopped", True, "test", clock.now())
        await st.dispatcher.tick()  # sales: 6 sent, 2 wait for room; late: held till 22:00 Chicago
        app = create_app(AppContext(settings=st.settings, pool=pool, clock=clock, dispatcher=st.dispatcher))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=URL) as c:
            assert (await log_in(c)).status_code == 303
            for url in ("/ui/targets", "/ui/targets?part=list"):  # the page and its live refresh
                html = (await c.get(url)).text
                assert table(html, "sales") == {"pacing": ("2", "—")}
                assert table(html, "stopped") == {"paused": ("2", "—")}
                late = table(html, "late")
                assert list(late) == ["calling_hours"] and late["calling_hours"][0] == "1"
                assert late["calling_hours"][1] == (NOON + timedelta(hours=10)).strftime("%Y-%m-%d %H:%M:%S UTC")
                idle = re.search(r'data-waiting="idle".*?</table>', html, re.S)
                assert idle and "Nothing waiting." in idle.group(0)
                assert 'title="dispatchable, but calls in flight are at ready agents' in html
            # pausing from the console shows at once (the page's short-lived reading is dropped)
            r = await c.post("/ui/targets/sales/pause", data={"csrf": csrf_of(html)})
            assert r.status_code == 303
            html = (await c.get("/ui/targets?part=list")).text
            assert table(html, "sales") == {"paused": ("2", "—")}

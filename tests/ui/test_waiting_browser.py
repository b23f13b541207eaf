"""Why isn't it dialing, in a real headless Chromium against a real daemon in sandbox mode.

Five targets, each held for its own reason: ``sales`` has more leads than agents x
calls_per_agent while the sandbox holds every call it was given (pacing), ``stopped`` is
paused from the console, ``late``'s calling hours exclude now (calling_hours, clearing
when its window opens), today is a holiday of ``xmas`` (whose one lead also expires within
the hour: expired_soon) and ``later``'s campaign window opens tomorrow (campaign_window). The console's Targets page (as the browser rendered it, times in
the browser's zone), ``GET /v1/targets/{name}/waiting`` and ``dialer_calls_waiting`` on
``/metrics`` must agree.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver

from tests.conftest import TOKEN, DaemonProcess
from tests.ui.chromium import until

QUEUE = 'kind = "queue"\nagent_mapping = "global"\ncalls_per_agent = 1\n'
SALES = [f"+1312555{i:04d}" for i in range(100, 105)]  # 5 leads, 2 agents x 1 call
# the same format as the console's script (dialer/ui/static/app.js)
LOCAL_JS = """
return new Intl.DateTimeFormat(undefined, {year: "numeric", month: "short", day: "numeric",
  hour: "2-digit", minute: "2-digit", second: "2-digit", timeZoneName: "short"})
  .format(new Date(arguments[0]));
"""


def late_window(now: datetime) -> tuple[str, datetime]:
    """An hour that starts 3 to 4 hours from now (UTC; the lead's zone), and its next opening."""
    start = (now.hour + 3) % 24
    opens = now.replace(hour=start, minute=0, second=0, microsecond=0)
    if opens <= now:
        opens += timedelta(days=1)
    return f"{start:02d}:00-{(start + 1) % 24:02d}:00", opens


@pytest.fixture
def waiting_daemon(daemon_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[DaemonProcess, datetime]]:
    now = datetime.now(UTC)
    hours, opens = late_window(now)
    days = [(now + timedelta(days=n)).date().isoformat() for n in (0, 1)]  # a run across midnight too
    tomorrow = (now + timedelta(days=1)).isoformat().replace("+00:00", "Z")
    config = tmp_path / "dialer.toml"
    config.write_text(
        "[sandbox]\ntime_scale = 10\n\n"
        f'[targets.sales]\n{QUEUE}queue_id = "42"\nagents = ["alice", "bob"]\ncalling_hours = "00:00-24:00"\n\n'
        f'[targets.stopped]\n{QUEUE}queue_id = "47"\nagents = ["carol"]\ncalling_hours = "00:00-24:00"\n\n'
        f'[targets.late]\n{QUEUE}queue_id = "43"\nagents = ["dave"]\ncalling_hours = "{hours}"\n\n'
        f'[targets.xmas]\n{QUEUE}queue_id = "44"\nagents = ["erin"]\ncalling_hours = "00:00-24:00"\n'
        f'holidays = ["{days[0]}", "{days[1]}"]\n\n'
        f'[targets.later]\n{QUEUE}queue_id = "46"\nagents = ["frank"]\ncalling_hours = "00:00-24:00"\n'
        f'active_from = "{tomorrow}"\n')
    d = DaemonProcess({**daemon_env, "DIALER_CONFIG": str(config)}, tmp_path)
    d.start()
    try:
        yield d, opens
    finally:
        if d.stop() != 0:
            print(d.log.read_text()[-4000:])


def metric(text: str, target: str, reason: str, name: str = "dialer_calls_waiting") -> float | None:
    m = re.search(rf'^{name}\{{reason="{reason}",target="{target}"\}} (\S+)$', text, re.M) or \
        re.search(rf'^{name}\{{target="{target}",reason="{reason}"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else None


def page_table(d: WebDriver, target: str) -> dict[str, dict[str, str | None]]:
    """The reasons with calls in a target's table, as the browser shows them."""
    out: dict[str, dict[str, str | None]] = {}
    for row in d.find_elements(By.CSS_SELECTOR, f'table.waiting[data-waiting="{target}"] tr[data-reason]'):
        cells = row.find_elements(By.CSS_SELECTOR, "td")
        times = cells[1].find_elements(By.CSS_SELECTOR, "time")
        out[str(row.get_attribute("data-reason"))] = {
            "count": cells[0].text, "clears": cells[1].text,
            "datetime": times[0].get_attribute("datetime") if times else None,
            "title": times[0].get_attribute("title") if times else None}
    return out


def test_the_console_shows_why_each_target_waits(waiting_daemon: tuple[DaemonProcess, datetime],
                                                 browser: WebDriver) -> None:
    daemon, late_opens = waiting_daemon
    d = browser
    api = daemon.client()
    # the sandbox holds every call it is given: none ends while we look
    r = httpx.post(daemon.url + "/_sandbox/ryng/_sandbox/config", timeout=10,
                   json={"time_scale": 1000.0, "agent_pickup_s": 1000.0})
    assert r.status_code == 200, r.text

    # log in, and pause `stopped` from the console before it has anything to send
    d.get(daemon.url + "/ui/login")
    d.find_element(By.ID, "token").send_keys(TOKEN + Keys.ENTER)
    until(d, lambda x: x.current_url.rstrip("/").endswith("/ui"), what="logged in")
    d.get(daemon.url + "/ui/targets")
    d.find_element(By.CSS_SELECTOR, "form[action='/ui/targets/stopped/pause'] button").click()
    until(d, lambda x: "Target stopped paused." in x.find_element(By.CSS_SELECTOR, "main").text, what="paused")

    soon = (datetime.now(UTC) + timedelta(minutes=30)).isoformat()
    for target, numbers, extra in (("sales", SALES, {}), ("stopped", ["+13125550204", "+13125550205"], {}),
                                   ("late", ["+13125550200"], {"timezone": "UTC"}),
                                   ("xmas", ["+13125550201"], {"timezone": "UTC", "expires_at": soon}),
                                   ("later", ["+13125550202"], {})):
        r = api.post("/v1/batches", json={"target": target, "leads": [{"number": n, **extra} for n in numbers]})
        assert r.status_code == 202 and r.json()["accepted"] == len(numbers), r.text

    expected: dict[str, dict[str, tuple[int, datetime | None]]] = {
        "sales": {"pacing": (3, None)},  # 2 in flight at the sandbox, no wrap-up ending yet
        "stopped": {"paused": (2, None)},
        "late": {"calling_hours": (1, late_opens)},  # once the dispatcher has looked at it
        "xmas": {"holiday": (1, None), "expired_soon": (1, None)},  # times: checked below
        "later": {"campaign_window": (1, None)},
    }

    def api_says(target: str) -> dict[str, Any]:
        body = api.get(f"/v1/targets/{target}/waiting").json()
        body["held"] = {x["reason"]: (x["count"], datetime.fromisoformat(x["clears_at"]) if x["clears_at"] else None)
                        for x in body["reasons"] if x["count"]}
        return dict(body)

    def settled() -> dict[str, dict[str, Any]] | None:
        bodies = {t: api_says(t) for t in expected}
        held = {t: {r: (n, at if expected[t].get(r, (0, None))[1] else None) for r, (n, at) in b["held"].items()}
                for t, b in bodies.items()}
        return bodies if held == expected else None

    bodies = until(d, lambda _: settled(), 15, "the API to show every target's hold")
    assert (bodies["sales"]["in_flight"], bodies["sales"]["pacing_limit"]) == (2, 2)
    # the holiday hold is shortened to the lead's expiry; the window opens when configured
    expiry = bodies["xmas"]["held"]["expired_soon"][1]
    assert expiry is not None and bodies["xmas"]["held"]["holiday"][1] == expiry
    later_opens = bodies["later"]["held"]["campaign_window"][1]
    assert later_opens is not None and later_opens > datetime.now(UTC) + timedelta(hours=23)

    # the metric: its first reading is now, after everything settled (it is reused for 30 s);
    # a scrape waits for it a bounded time, then a later one shows it
    def scraped(_: Any) -> str | None:
        text = httpx.get(daemon.url + "/metrics", timeout=10).text
        return text if metric(text, "sales", "ready") is not None else None

    text = until(d, scraped, 15, "a scrape with the waiting calls")
    for target, want in expected.items():
        for reason in ("ready", "pacing", "paused", "calling_hours", "rate_budget", "breaker", "holiday",
                       "campaign_window", "expired_soon"):
            assert metric(text, target, reason) == want.get(reason, (0, None))[0], (target, reason)
    opens_at = metric(text, "late", "calling_hours", "dialer_calls_waiting_clears_timestamp_seconds")
    assert opens_at == late_opens.timestamp()

    # the console, as rendered (its list refreshes itself every few seconds)
    d.get(daemon.url + "/ui/targets")

    def page_agrees(x: WebDriver) -> dict[str, Any] | None:
        seen = {t: page_table(x, t) for t in expected}
        counts = {t: {r: int(v["count"] or -1) for r, v in rows.items()} for t, rows in seen.items()}
        localized = "UTC" not in str(seen.get("late", {}).get("calling_hours", {}).get("clears"))
        want = {t: {r: n for r, (n, _) in w.items()} for t, w in expected.items()}
        return seen if counts == want and localized else None

    seen = until(d, page_agrees, 15, "the Targets page to show every target's hold")
    assert seen["sales"]["pacing"]["clears"] == "—" and seen["stopped"]["paused"]["clears"] == "—"
    late = seen["late"]["calling_hours"]
    iso = late_opens.isoformat().replace("+00:00", "Z")
    assert late["datetime"] == iso and late["title"] == f"UTC: {iso}"
    assert late["clears"] == d.execute_script(LOCAL_JS, iso)  # in the browser's zone

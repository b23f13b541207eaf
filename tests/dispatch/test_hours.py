from __future__ import annotations

from datetime import UTC, datetime

import pytest

from dialer.dispatch import hours

NINE_TO_EIGHT = hours.window("09:00-20:00")


def at(h: int, m: int = 0) -> datetime:
    return datetime(2026, 1, 5, h, m, tzinfo=UTC)  # a Monday, standard time in the US


@pytest.mark.parametrize(
    ("number", "tz", "now", "expect_open"),
    [
        ("+14155550100", None, at(18), True),  # 10:00 in San Francisco
        ("+14155550100", None, at(15), False),  # 07:00 there
        ("+12125550100", None, at(15), True),  # 10:00 in New York
        ("+14155550100", "America/New_York", at(15), True),  # the timezone column wins
        ("+442079460018", None, at(8), False),  # 08:00 in London
        ("+442079460018", None, at(9), True),
    ],
)
def test_open_or_not(number: str, tz: str | None, now: datetime, expect_open: bool) -> None:
    assert hours.inside(hours.zones_for(number, tz), NINE_TO_EIGHT, now) is expect_open


def test_closed_lead_waits_until_the_window_opens() -> None:
    sf = hours.zones_for("+14155550100", None)
    assert hours.next_open(sf, NINE_TO_EIGHT, at(15)) == at(17)
    # 21:00 in SF → next morning 09:00 PST = 17:00 UTC the next day
    nxt = hours.next_open(sf, NINE_TO_EIGHT, datetime(2026, 1, 6, 5, tzinfo=UTC))
    assert nxt == datetime(2026, 1, 6, 17, tzinfo=UTC)


def test_a_number_spanning_zones_needs_every_zone_inside() -> None:
    # toll-free +1 800 spans Guam to Newfoundland: 09-20 everywhere never overlaps → waits a day
    zones = hours.zones_for("+18005550100", None)
    assert len(zones) > 5
    now = at(15)
    assert not hours.inside(zones, NINE_TO_EIGHT, now)
    # a window wide enough to include all zones at some instant is found
    nxt = hours.next_open(zones, hours.window("00:00-24:00"), now)
    assert nxt == now


def test_window_across_midnight() -> None:
    w = hours.Window.parse("22:00-02:00")
    assert w.contains(datetime(2026, 1, 1, 23).time()) and w.contains(datetime(2026, 1, 1, 1).time())
    assert not w.contains(datetime(2026, 1, 1, 12).time())

"""Campaign figures on the console: a target's page (``/ui/targets/{name}``) and the block
the batch page shows — the API's figures (``http.figures``), with the answer rate by hour
of the lead's day drawn server-side as inline SVG (no third-party asset)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request
from markupsafe import Markup
from starlette.responses import Response

from dialer.http.figures import HourOut, target_figures_out
from dialer.results import figures
from dialer.ui.console import UI, Sess, UiError, int_param

router = APIRouter(include_in_schema=False)

WINDOWS_H = (1, 24, 24 * 7, 24 * 31)  # the choices the page offers


@router.get("/ui/targets/{name}")
async def target_page(request: Request, name: str, ui: UI, s: Sess) -> Response:
    window_h = int_param(request.query_params.get("window_h"), figures.DEFAULT_WINDOW_H, 1,
                         figures.MAX_WINDOW_H)
    f = await target_figures_out(ui.ctx, name, window_h)
    if f is None:
        raise UiError(404, f"There is no target {name!r}.")
    return ui.page(request, "target.html", name=name, figures=f, chart=hour_chart(f.answer_rate_by_hour),
                   window_h=window_h, windows=WINDOWS_H, nav="targets", title=f"Target {name}")


def hour_chart(hours: Sequence[HourOut], title: str = "Answer rate by hour of the lead's day") -> Markup:
    """24 vertical bars, one per local hour: height the answer rate, a darker mark where an
    hour had attempts but no answer; each bar's title gives answered / attempts."""
    if not any(h.attempts for h in hours):
        return Markup('<p class="empty">No attempt yet: the chart appears with the first call sent.</p>')
    left, top, plot_h, bar_w, gap = 40, 10, 150, 18, 6
    width = left + 24 * (bar_w + gap) + 10
    height = top + plot_h + 40
    desc = ", ".join(f"{h.hour:02d}h: {h.answered} of {h.attempts}" for h in hours if h.attempts)
    out: list[Any] = [Markup(
        '<svg class="chart hours" viewBox="0 0 {w} {h}" width="{w}" role="img" '
        'aria-labelledby="hours-title hours-desc" preserveAspectRatio="xMinYMin meet">'
        '<title id="hours-title">{t}</title><desc id="hours-desc">{d}</desc>'
    ).format(w=width, h=height, t=title, d=desc)]
    for pct in (0, 50, 100):  # the scale
        y = top + plot_h * (1 - pct / 100)
        out.append(Markup(
            '<line x1="{}" y1="{:.1f}" x2="{}" y2="{:.1f}" stroke="#d1d5db" stroke-width="1"></line>'
            '<text x="{}" y="{:.1f}" text-anchor="end" class="chart-label">{}%</text>'
        ).format(left, y, width - 10, y, left - 6, y + 4, pct))
    for h in hours:
        x = left + h.hour * (bar_w + gap) + gap / 2
        if h.attempts:
            rate = h.answer_rate or 0.0
            bar_h = max(2.0, plot_h * rate)
            out.append(Markup(
                '<rect x="{:.1f}" y="{:.1f}" width="{}" height="{:.1f}" rx="2" fill="{}">'
                '<title>{:02d}:00-{:02d}:59: {} answered of {} attempts ({:.0f}%)</title></rect>'
            ).format(x, top + plot_h - bar_h, bar_w, bar_h, "#1f7a3a" if h.answered else "#b3261e",
                     h.hour, h.hour, h.answered, h.attempts, 100 * rate))
        if h.hour % 3 == 0:
            out.append(Markup('<text x="{:.1f}" y="{}" text-anchor="middle" class="chart-label">'
                              '{:02d}</text>').format(x + bar_w / 2, top + plot_h + 16, h.hour))
    out.append(Markup('<text x="{:.1f}" y="{}" text-anchor="middle" class="chart-label">'
                      'hour of the lead\'s local day</text>').format(left + 12 * (bar_w + gap), height - 4))
    out.append(Markup("</svg>"))
    return Markup("").join(out)

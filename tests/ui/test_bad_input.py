"""Bad input to the console is answered by the console: an HTML page with a 4xx status and
a message saying what was wrong, never a 500 or the API's JSON."""

from __future__ import annotations

import httpx
import pytest

from tests.ui.conftest import Console

BATCH = "00000000-0000-0000-0000-000000000000"
# every route of the console that takes a form
FORM_POSTS = ["/ui/logout", f"/ui/batches/{BATCH}/cancel", "/ui/targets/sales/pause", "/ui/targets/sales/resume",
              "/ui/dnc", "/ui/dnc/remove", "/ui/upload", "/ui/calls/1/schedule"]
MALFORMED = [
    ("multipart/form-data", b"x"),  # no boundary at all
    ("multipart/form-data; boundary=b", b"x"),  # not the boundary it names
    ("multipart/form-data; boundary=b", b"--b\r\nno colon in this header\r\n\r\nv\r\n--b--\r\n"),
    ("application/x-www-form-urlencoded", "&".join(f"f{i}=1" for i in range(60)).encode()),  # too many fields
]


def is_console_page(r: httpx.Response) -> bool:
    return r.headers["content-type"].startswith("text/html") and "<html" in r.text


@pytest.mark.parametrize(("ctype", "body"), MALFORMED,
                         ids=["no-boundary", "other-boundary", "bad-part-header", "too-many-fields"])
async def test_a_form_that_cannot_be_read_is_a_400_page_on_every_form_route(
        anon: httpx.AsyncClient, console: Console, ctype: str, body: bytes) -> None:
    await anon.get("/ui/login")  # the login form needs no session: its nonce cookie is enough
    r = await anon.post("/ui/login", content=body, headers={"content-type": ctype})
    assert r.status_code == 400, r.text[:300]
    assert is_console_page(r) and "the form could not be read" in r.text
    for path in FORM_POSTS:
        r = await console.c.post(path, content=body, headers={"content-type": ctype})
        assert r.status_code == 400, (path, r.text[:300])
        assert is_console_page(r) and "the form could not be read" in r.text, path
    # nothing was done: still logged in, the target still running
    page = await console.c.get("/ui/targets")
    assert page.status_code == 200 and "Pause sales" in page.text

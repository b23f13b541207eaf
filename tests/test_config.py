from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from dialer.config import load_settings, settings_from
from dialer.errors import ConfigError

GOOD = """
default_target = "sales"

[targets.sales]
kind = "queue"
queue_id = "42"
agent_mapping = "global"
agents = ["alice", "bob", "carol"]
leg_direction = "agent-first"
max_retries = 2
retry_interval_min = 30
max_dispose_s = 45
chunk_size = 500
calls_per_agent = 2
calling_hours = "09:00-20:00"
ref_field = 10
dedupe_window_h = 24

[targets.sales.recycle]
no_answer = { after_min = 120, max = 2 }
busy = { after_min = 20, max = 3 }
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "dialer.toml"
    p.write_text(text)
    return p


def test_spec_example_loads(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, GOOD), environ={})
    t = s.targets["sales"]
    assert t.queue_id == "42" and t.agents == ["alice", "bob", "carol"]
    assert t.recycle["busy"].max == 3
    assert s.inbox == Path("var/inbox")


def test_env_wins_over_file(tmp_path: Path) -> None:
    text = 'http_listen = "127.0.0.1:9000"\n' + GOOD
    s = load_settings(write(tmp_path, text), environ={"DIALER_HTTP_LISTEN": "127.0.0.1:9100"})
    assert s.listen_port == 9100


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("frobnicate = 1\n" + GOOD, "frobnicate: unknown key"),
        (GOOD.replace("chunk_size = 500", "chunk_size = 500\nchunk_sise = 3"),
         "targets.sales.chunk_sise: unknown key"),
        (GOOD.replace('calling_hours = "09:00-20:00"', 'calling_hours = "9am-5pm"'),
         "targets.sales.calling_hours"),
        (GOOD.replace('kind = "queue"', 'kind = "robocall"'), "targets.sales.kind"),
        (GOOD.replace('default_target = "sales"', 'default_target = "nope"'), "default_target"),
        ('http_listen = "nowhere"\n' + GOOD, "http_listen"),
        ("this is = not toml [", "not valid TOML"),
        ('ryng_token = "abc"\n' + GOOD, "ryng_token: secrets are read from the environment"),
        ("ingest_copy_streams = 0\n" + GOOD, "ingest_copy_streams"),
        ("ingest_copy_streams = 4\ndb_pool_size = 4\n" + GOOD,
         "ingest_copy_streams (4) must be less than db_pool_size (4)"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(write(tmp_path, text), environ={})
    assert needle in e.value.message


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (GOOD.replace("chunk_size = 500", "chunk_size = true"), "targets.sales.chunk_size"),
        (GOOD.replace("calls_per_agent = 2", 'calls_per_agent = "2"'), "targets.sales.calls_per_agent"),
        ('settle_s = "2"\n' + GOOD, "settle_s"),
        ('webhook_allow_private = "yes"\n' + GOOD, "webhook_allow_private"),
        ("db_pool_size = 10.5\n" + GOOD, "db_pool_size"),
    ],
)
def test_a_toml_value_of_the_wrong_type_is_not_coerced(tmp_path: Path, text: str, needle: str) -> None:
    # the lax validation the environment's strings need would read true as 1 and "2" as 2
    with pytest.raises(ConfigError) as e:
        load_settings(write(tmp_path, text), environ={})
    assert needle in e.value.message


def test_environment_strings_still_become_numbers_over_a_file(tmp_path: Path) -> None:
    text = "settle_s = 1.5\ndb_pool_size = 6\n" + GOOD
    s = load_settings(write(tmp_path, text), environ={
        "DIALER_SETTLE_S": "3", "DIALER_DB_POOL_SIZE": "12", "DIALER_WEBHOOK_ALLOW_PRIVATE": "true",
        "DIALER_API_TOKENS": "a,b", "DIALER_RYNG_TOKEN": "t",
    })
    assert (s.settle_s, s.db_pool_size, s.webhook_allow_private) == (3.0, 12, True)
    assert [t.get_secret_value() for t in s.api_tokens] == ["a", "b"]
    # a whole number where a float goes is fine in TOML, and so is 45.0 for a whole number
    assert load_settings(write(tmp_path, "settle_s = 2\n" + GOOD), environ={}).settle_s == 2.0
    s = load_settings(write(tmp_path, GOOD.replace("max_dispose_s = 45", "max_dispose_s = 45.0")), environ={})
    assert s.targets["sales"].max_dispose_s == 45


@pytest.mark.parametrize("doc", ["README.md", "SPEC.md"])
def test_every_toml_example_in_the_docs_loads(tmp_path: Path, doc: str) -> None:
    root = Path(__file__).resolve().parents[1]
    path = root / doc if doc == "README.md" else root.parent / "shared" / doc
    if not path.exists():
        pytest.skip(f"{path} is not beside the repository")
    blocks = re.findall(r"```toml\n(.*?)```", path.read_text(), re.S)
    assert blocks
    for block in blocks:
        data = tomllib.loads(block)
        if "default_target" not in data:  # a fragment: over the full example
            data = _merged(tomllib.loads(GOOD), data)
        try:
            settings_from(data, doc, env={})
        except ConfigError as e:
            # examples may name files (holidays_ics) that exist only on a real host
            assert "is not a readable file" in e.message, (doc, block, e.message)


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def test_bad_env_value_names_the_key() -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(None, environ={"DIALER_SETTLE_S": "soon"})
    assert "settle_s (from DIALER_SETTLE_S)" in e.value.message


def check_config(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``dialer check-config`` with only ``env`` (and PATH, and PYTHONPATH: the code under test)."""
    keep = {k: os.environ[k] for k in ("PYTHONPATH",) if k in os.environ}
    return subprocess.run([sys.executable, "-m", "dialer", "check-config"],
                          env={"PATH": "/usr/bin:/bin", **keep, **env},
                          capture_output=True, text=True, cwd=cwd, timeout=60)


def test_check_config_redacts_secrets(tmp_path: Path) -> None:
    env = {
        "DIALER_CONFIG": str(write(tmp_path, GOOD)),
        "DIALER_RYNG_TOKEN": "ryng-secret-token-xyz",
        "DIALER_API_TOKENS": "tok-aaaaaaaa,tok-bbbbbbbb",
        "DIALER_DATABASE_URL": "postgresql://u:pw-secret@db/x",
        "DIALER_CALLBACK_SECRET": "cb-secret-123456",
    }
    r = check_config(env, tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    for secret in ("ryng-secret-token-xyz", "tok-aaaaaaaa", "pw-secret", "cb-secret-123456"):
        assert secret not in out
    assert '"queue_id": "42"' in r.stdout


def test_check_config_fails_with_the_key(tmp_path: Path) -> None:
    r = check_config({"DIALER_CONFIG": str(write(tmp_path, "bogus = 1\n" + GOOD))}, tmp_path)
    assert r.returncode == 2
    assert "bogus: unknown key" in r.stderr


@pytest.mark.parametrize(("name", "why"), [
    ("processed", "the inbox keeps its own processed/ folder"),
    ("failed", "the inbox keeps its own failed/ folder"),
    (".hidden", "the inbox ignores a folder of that name"),
    ("leads.TMP", "the inbox ignores a folder of that name"),
    ("x.part", "the inbox ignores a folder of that name"),
    ("eu/sales", "a target's name is its inbox folder's name"),
    ("", "a target's name is its inbox folder's name"),
])
def test_a_target_whose_inbox_folder_is_never_scanned_stops_start_up(
        tmp_path: Path, name: str, why: str) -> None:
    text = GOOD + f'\n[targets."{name}"]\nqueue_id = "7"\n'
    with pytest.raises(ConfigError) as e:
        load_settings(write(tmp_path, text), environ={})
    assert f"targets.{name}: {why}" in e.value.message
    r = check_config({"DIALER_CONFIG": str(write(tmp_path, text))}, tmp_path)
    assert r.returncode == 2 and f"targets.{name}: {why}" in r.stderr


@pytest.mark.parametrize("key", ["DIALER_RYNG_BASE_URL", "DIALER_PUBLIC_URL"])
@pytest.mark.parametrize("value", ["acme.ryng.in", "ftp://acme.ryng.in", "https://", "http://host:0"])
def test_a_url_that_is_no_http_url_stops_start_up_naming_the_key(tmp_path: Path, key: str, value: str) -> None:
    # SPEC §3: bad values stop start-up; a bare host would only fail at the first request
    env = {"DIALER_STATE_DIR": str(tmp_path), key: value}
    with pytest.raises(ConfigError) as e:
        load_settings(None, environ=env)
    assert key.removeprefix("DIALER_").lower() in str(e.value) and "http(s) URL" in str(e.value)
    assert load_settings(None, environ={**env, key: "https://acme.ryng.example:8443/base"})


def test_an_empty_calling_window_stops_start_up(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="empty window"):
        load_settings(None, environ={}, overrides={"targets": {"sales": {"queue_id": "1",
                                                                         "calling_hours": "09:00-09:00"}}})
    with pytest.raises(ConfigError, match="empty window"):
        load_settings(None, environ={}, overrides={"compliance": {"calling_hours_by_region": {"DE": "10:00-10:00"}}})


def test_a_misspelled_dialer_variable_is_a_warning_with_a_suggestion() -> None:
    s = load_settings(None, environ={"DIALER_RYNG_BASEURL": "https://acme.ryng.in", "DIALER_SLOW": "1",
                                     "DIALER_CONFIG": "", "DIALER_SETTLE_S": "1", "DIALERX": "y"})
    assert s.sandbox_mode  # the typo is not read: that is why it must be said
    assert s.warnings == ("DIALER_RYNG_BASEURL is not a dialer setting and is ignored; "
                          "did you mean DIALER_RYNG_BASE_URL?",)
    (w,) = load_settings(None, environ={"DIALER_ZZZZZZZZZZZZZZZZZZZ": "x"}).warnings
    assert "DIALER_ZZZZZZZZZZZZZZZZZZZ" in w and "did you mean" not in w


def test_check_config_prints_the_warnings_on_stderr(tmp_path: Path) -> None:
    env = {"DIALER_CONFIG": str(write(tmp_path, GOOD)), "DIALER_RYNG_BASEURL": "https://secret-host.example"}
    r = check_config(env, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "warning: DIALER_RYNG_BASEURL is not a dialer setting" in r.stderr
    assert "did you mean DIALER_RYNG_BASE_URL?" in r.stderr
    assert "DIALER_RYNG_BASEURL" not in r.stdout and "secret-host" not in r.stdout + r.stderr


ICS = """BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//test//EN
BEGIN:VEVENT
DTSTART;VALUE=DATE:20261225
SUMMARY:Christmas
END:VEVENT
END:VCALENDAR
"""


@pytest.mark.parametrize("key", ["compliance.holidays_ics", "targets.sales.holidays_ics"])
@pytest.mark.parametrize("content", [b"not a calendar\n", b"\xff\xfe\x00\x01",
                                     ICS.replace("20261225", "2026zz").encode()])
def test_a_holidays_ics_that_does_not_parse_stops_start_up(tmp_path: Path, key: str, content: bytes) -> None:
    # it used to pass check-config and crash `dialer run` with a traceback
    ics = tmp_path / "holidays.ics"
    ics.write_bytes(content)
    line = f'holidays_ics = "{ics}"\n'
    text = (GOOD + "\n[compliance]\n" + line if key.startswith("compliance")
            else GOOD.replace("[targets.sales]\n", "[targets.sales]\n" + line))
    with pytest.raises(ConfigError) as e:
        load_settings(write(tmp_path, text), environ={})
    assert f"{key}: " in e.value.message and "iCalendar" in e.value.message
    ics.write_text(ICS)
    load_settings(write(tmp_path, text), environ={})


@pytest.mark.parametrize(("make", "needle"), [
    (lambda p: p.mkdir(), "is a directory, not a file"),
    (lambda p: p.write_bytes(b'default_target = "caf\xe9"\n'), "is not UTF-8 text: byte 0xe9 at offset 21"),
])
def test_a_config_file_that_cannot_be_read_is_a_config_error(tmp_path: Path, make: Any, needle: str) -> None:
    path = tmp_path / "dialer.toml"
    make(path)
    with pytest.raises(ConfigError) as e:
        load_settings(path, environ={})
    assert e.value.message == f"config file {path} {needle}"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_config_file_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    path.chmod(0)
    with pytest.raises(ConfigError, match=f"config file {path} cannot be read: Permission denied"):
        load_settings(path, environ={})


@pytest.mark.parametrize("dsn", [
    "mysql://app:pw-s3cret@db/x", "pw-s3cret@db/x", "postgresql://app:pw-s3cret@db:port/x",
    "postgres://app:pw-s3cret@db:99999/x", "postgresql://app:pw-s3cret@h1:5432,h2:x/x",
])
def test_a_database_url_asyncpg_cannot_use_names_the_key_not_the_password(dsn: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_settings(None, environ={"DIALER_DATABASE_URL": dsn})
    assert "database_url (from DIALER_DATABASE_URL)" in e.value.message
    assert "s3cret" not in e.value.message


@pytest.mark.parametrize("dsn", [
    "postgresql://app:pw@db:5432/x", "postgres://db/x", "postgresql://[::1]:5433/x",
    "postgresql://h1:5432,h2:5433/x", "postgresql:///x?host=/run/postgresql", "POSTGRESQL://db:5432/x",
])
def test_database_urls_asyncpg_takes_are_accepted(dsn: str) -> None:
    s = load_settings(None, environ={"DIALER_DATABASE_URL": dsn})
    assert s.database_url is not None and s.database_url.get_secret_value() == dsn


def test_http_listen_on_port_0_is_refused() -> None:
    # the kernel would pick a port nobody knows; callbacks and the console could not find it
    with pytest.raises(ConfigError, match="http_listen"):
        load_settings(None, environ={"DIALER_HTTP_LISTEN": "127.0.0.1:0"})


def test_queue_only_keys_on_a_campaign_target_are_a_warning(tmp_path: Path) -> None:
    text = GOOD.replace('kind = "queue"', 'kind = "campaign"').replace(
        'leg_direction = "agent-first"', 'leg_direction = "customer-first"')
    s = load_settings(write(tmp_path, text), environ={})
    assert s.warnings == (
        "targets.sales.max_retries is not sent: Ryng campaigns take no maxRetries, only queue "
        'appends (kind = "queue") do',
        "targets.sales.retry_interval_min is not sent: Ryng campaigns take no retryInterval, only "
        'queue appends (kind = "queue") do',
        "targets.sales.leg_direction is not sent: Ryng campaigns take no legDirection, only queue "
        'appends (kind = "queue") do (customer-first still turns on the abandon-rate guard)',
    )
    assert load_settings(write(tmp_path, GOOD), environ={}).warnings == ()


@pytest.mark.parametrize(("inbox", "what"), [(".", "the state directory"), ("./", "the state directory"),
                                             ("link", "the state directory"),
                                             ("..", "the folder the state directory is in"),
                                             ("postgres", "inside the state directory's own folders"),
                                             ("spool/x", "inside the state directory's own folders")])
def test_an_inbox_that_is_the_state_directory_stops_start_up(tmp_path: Path, inbox: str, what: str) -> None:
    """Its files (the callback secret, the token file) would be taken for lead files; in
    the inbox's parent, the state directory would be scanned as a target's folder."""
    state = tmp_path / "var"
    state.mkdir()
    (tmp_path / "link").symlink_to(state)
    env = {"DIALER_STATE_DIR": str(state), "DIALER_INBOX_DIR": str(state / inbox) if inbox != "link"
           else str(tmp_path / "link")}
    with pytest.raises(ConfigError) as e:
        load_settings(None, environ=env)
    assert "inbox_dir" in e.value.message and f"is {what};" in e.value.message
    for fine in (state / "inbox", state / "inbox" / "sub", tmp_path.parent):  # the default; one level up
        assert load_settings(None, environ={**env, "DIALER_INBOX_DIR": str(fine)}).inbox == fine


def test_a_config_file_that_is_no_regular_file_or_too_big_is_refused(tmp_path: Path) -> None:
    """A SIGHUP reads the file on the event loop: a FIFO there blocked the daemon for good,
    a link to /dev/zero filled its memory."""
    fifo, zero, big = tmp_path / "fifo.toml", tmp_path / "zero.toml", tmp_path / "big.toml"
    os.mkfifo(fifo)
    zero.symlink_to("/dev/zero")
    big.write_text("# " + "x" * (1 << 20) + "\n")
    for path, why in ((fifo, "is not a regular file"), (zero, "is not a regular file"),
                      (big, "is larger than 1,048,576 bytes")):
        with pytest.raises(ConfigError) as e:
            load_settings(path, environ={})
        assert f"config file {path} {why}" == e.value.message
    with pytest.raises(ConfigError, match="is a directory, not a file"):
        load_settings(tmp_path, environ={})

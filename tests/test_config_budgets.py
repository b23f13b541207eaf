"""Config of the provider rate budget and the abandon-rate guard: the README's example
loads, and bad values stop start-up naming the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dialer.config import load_settings
from dialer.errors import ConfigError

README = Path(__file__).resolve().parents[1] / "README.md"


def _load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "d.toml"
    path.write_text('default_target = "outbound"\n' + text)
    return load_settings(path, environ={})


def test_the_readme_example_loads(tmp_path: Path) -> None:
    block = next(b for b in re.findall(r"```toml\n(.*?)```", README.read_text(), re.S) if "[providers.ryng]" in b)
    s = _load(tmp_path, block)
    assert s.providers.ryng.max_calls_per_s == 5  # type: ignore[attr-defined]
    t = s.targets["outbound"]  # type: ignore[attr-defined]
    assert (t.abandon_slowdown_pct, t.abandon_max_pct, t.abandon_redial_min) == (2.5, 3, 4320)
    assert t.recycle["abandoned"].after_min == 60
    assert s.sandbox.abandon_rate == 0.05  # type: ignore[attr-defined]


def test_defaults(tmp_path: Path) -> None:
    s = _load(tmp_path, '[targets.outbound]\nqueue_id = "1"\n')
    assert s.providers.ryng.max_calls_per_s is None and s.providers.ryng.rate_recover_s == 60  # type: ignore[attr-defined]
    t = s.targets["outbound"]  # type: ignore[attr-defined]
    assert (t.abandon_slowdown_pct, t.abandon_max_pct, t.abandon_redial_min) == (2.5, 3.0, 4320)


@pytest.mark.parametrize(("text", "key"), [
    ("[providers.ryng]\nmax_calls_per_s = 0\n", "providers.ryng.max_calls_per_s"),
    ("[providers.ryng]\nmax_requests_per_s = -1\n", "providers.ryng.max_requests_per_s"),
    ("[providers.ryng]\nmax_call_per_s = 5\n", "providers.ryng.max_call_per_s: unknown key"),
    ("[providers.twilio]\nmax_calls_per_s = 1\n", "providers.twilio: unknown key"),
    ("[sandbox]\nabandon_rate = 1.5\n", "sandbox.abandon_rate"),
    ('[targets.outbound]\nqueue_id = "1"\nabandon_max_pct = 0\n', "targets.outbound.abandon_max_pct"),
    ('[targets.outbound]\nqueue_id = "1"\nabandon_slowdown_pct = 4\n',
     "abandon_slowdown_pct must not exceed abandon_max_pct"),
])
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    if "[targets.outbound]" not in text:
        text += '\n[targets.outbound]\nqueue_id = "1"\n'
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, text)
    assert key in str(e.value), str(e.value)

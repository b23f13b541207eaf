"""Local fakes of the PortSIP, ringme and Stringee APIs: real HTTP servers on loopback.

Each follows its vendor page (``../shared/reference/``) closely enough to test against:
auth, paging, the documented shapes, and the provider's own calls to our hooks.
"""

from tests.fakes.portsip import FakePortSip
from tests.fakes.ringme import FakeRingme
from tests.fakes.server import FakeServer, serve
from tests.fakes.stringee import FakeStringee

__all__ = ["FakePortSip", "FakeRingme", "FakeServer", "FakeStringee", "serve"]

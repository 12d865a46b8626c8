"""``stor.core.reactor.Reactor`` is a make-believe interface (nothing declares it): it
must promise no more than the reactor stor runs on provides."""

import subprocess
import sys

import pytest

from stor.core.reactor import Connection, Reactor

CHECK = """
import sys
from twisted.internet import reactor
from stor.core.reactor import Reactor, the_reactor
# treq's _ITreqReactor is make-believe too: its bases are in the resolution order
missing = [i.__name__ for i in Reactor.__iro__[1:]
           if i.__name__ not in ('Interface', '_ITreqReactor') and not i.providedBy(reactor)]
print(type(reactor).__name__, missing, the_reactor() is reactor)
"""


@pytest.mark.acceptance("process")
def test_the_default_reactor_provides_every_interface_reactor_extends() -> None:
    # a fresh process: the reactor twistd and `stor put` get is the default one
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    assert out == ["EPollReactor", "[]", "True"]


def test_reactor_names_what_stor_calls() -> None:
    for name in ("callLater", "seconds", "callFromThread", "getThreadPool", "callWhenRunning",
                 "stop", "spawnProcess", "addReader", "adoptStreamPort", "listenUNIX",
                 "connectTCP"):
        assert name in Reactor, name
    for name in ("write", "abortConnection", "pauseProducing", "registerProducer", "getPeer"):
        assert name in Connection, name

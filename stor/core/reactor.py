"""The reactor as stor's code sees it: one named type instead of ``Any``.

Twisted types its global ``twisted.internet.reactor`` as a make-believe interface
(core, time, file descriptors, TCP, processes) that leaves out the threads, UNIX
sockets and adopted ports stor uses. ``Reactor`` is the same device with what stor
calls: a function that takes one can be given the real reactor (through
``the_reactor``, the one place the global is narrowed) or, in a test, anything that
implements the methods it uses (``task.Clock``, ``MemoryReactorClock``).
Functions that only schedule take the narrower ``IReactorTime``.
"""

from collections.abc import Callable
from typing import Any, Protocol, TypeVar, cast

from treq._types import _ITreqReactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IConsumer,
    IPushProducer,
    IReactorCore,
    IReactorFDSet,
    IReactorProcess,
    IReactorSocket,
    IReactorThreads,
    IReactorUDP,
    IReactorUNIX,
    ITCPTransport,
)
from zope.interface import Attribute


class Reactor(_ITreqReactor, IReactorCore, IReactorThreads, IReactorFDSet, IReactorUNIX,
              IReactorUDP, IReactorSocket, IReactorProcess):
    """Every interface of the reactor stor uses (what the default epoll reactor provides).

    treq types the reactor it takes with its own make-believe interface (TCP, time and
    the name resolver); interfaces are nominal, so ``Reactor`` extends that one rather
    than those three, to be accepted by treq."""


def the_reactor() -> Reactor:
    """The installed global reactor, typed as what it is on Linux."""
    from twisted.internet import reactor

    return cast(Reactor, reactor)


class Connection(ITCPTransport, IPushProducer, IConsumer):
    """A connection as the reactor hands it to a protocol (``protocol.transport``):
    a TCP (or UNIX) transport that is also the producer of what it reads (paused
    for back-pressure) and the consumer of what the protocol streams to it.

    Twisted types ``Protocol.transport`` as an optional ``ITransport``; stor's
    protocols declare ``transport: Connection``: it is set by ``makeConnection``
    before any other call reaches them."""

    disconnecting = Attribute("True once loseConnection or abortConnection was called")
    bufferSize = Attribute("Bytes read per read call")


T = TypeVar("T")


class Runner(Protocol):
    """Runs a blocking call in a thread pool (``DiskPool.run``), so the reactor never
    waits on a disk; the Deferred fires on the reactor thread with what ``f`` returned."""

    def __call__(self, f: Callable[..., T], /, *args: Any) -> "Deferred[T]": ...

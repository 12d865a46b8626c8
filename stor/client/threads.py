"""The one door to threads: every blocking file call of the client goes through here.

The reactor's own thread pool is used (sized for ``-j N`` by the commands);
calls for one item are made one after another, so the blocking objects of
:mod:`stor.client.localfiles` need no locks.
"""

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

from stor.core.reactor import Reactor

T = TypeVar("T")


def in_thread(reactor: Reactor, fn: Callable[..., T], *args: Any, **kwargs: Any) -> "Deferred[T]":
    """Run the blocking ``fn(*args, **kwargs)`` off the reactor; its result fires on the reactor."""
    return deferToThreadPool(reactor, reactor.getThreadPool(), fn, *args, **kwargs)

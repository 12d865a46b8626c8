"""The one place tests get a TCP port for a peer that cannot bind port 0 itself.

stor's own processes and moto bind port 0 and report the port they got, so
nothing can take it in between.  memcached, nginx and HAProxy are told a port
on their command line or in their config: that port has to be chosen before
they start, and a port chosen, released and then bound by another process is a
race.  Two things close it:

- ports come from below the kernel's ephemeral range
  (``/proc/sys/net/ipv4/ip_local_port_range``), so no port-0 bind and no
  outgoing connection anywhere on the machine is ever handed one of them; only
  another explicit choice can collide (another test run, on a shared machine);
- :func:`start_on_free_port` starts the peer and, when it exits saying the
  address is in use, starts it again on another port.
"""

from __future__ import annotations

import errno
import os
import random
import socket
from collections.abc import Callable
from typing import TypeVar

HOST = "127.0.0.1"
ATTEMPTS = 20
_LOW = 20000  # well above the well-known and registered ports services use by default

T = TypeVar("T")


class AddressInUse(Exception):
    """A peer could not bind the port it was given (EADDRINUSE): try another one."""


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_rng = random.Random(os.getpid())  # runs on a shared machine start from different places


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def free_port() -> int:
    """A loopback port outside the ephemeral range that nothing is bound to right now.

    A peer given this port may still find it taken when it starts (another
    test run chose it too): start it through :func:`start_on_free_port`.
    """
    high = _ephemeral_low() - 1
    for _ in range(1000):
        port = _rng.randint(_LOW, high)
        if _bindable(port):
            return port
    raise RuntimeError(f"no free port between {_LOW} and {high}")


def refused_port() -> int:
    """A loopback port nothing listens on, for a connection that must be refused."""
    return free_port()


def start_on_free_port(start: Callable[[int], T], attempts: int = ATTEMPTS) -> T:
    """``start(port)`` on a port from :func:`free_port`; again on another one each
    time it raises :class:`AddressInUse`."""
    for _ in range(attempts - 1):
        try:
            return start(free_port())
        except AddressInUse:
            continue
    return start(free_port())


def start_on_free_ports(start: Callable[[int, int], T], attempts: int = ATTEMPTS) -> T:
    """:func:`start_on_free_port` for a peer that listens on two ports."""
    return start_on_free_port(lambda port: start(port, free_port()), attempts)


IN_USE_MESSAGES = ("Address already in use", "EADDRINUSE", "cannot bind socket")


def says_in_use(output: str) -> bool:
    """Whether a peer's output says it could not bind its address."""
    return any(m in output for m in IN_USE_MESSAGES)

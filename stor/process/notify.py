"""The systemd notify protocol: one datagram to ``$NOTIFY_SOCKET``.

``Type=notify`` units wait for ``READY=1`` before they count as started, and
``STOPPING=1`` tells systemd the stop was asked for and is under way.  The
protocol is a single ``AF_UNIX`` datagram of ``KEY=value`` lines; a name
starting with ``@`` is in the abstract namespace (a leading NUL byte).  Without
``$NOTIFY_SOCKET`` (not under systemd) every call is a no-op, and a failed send
is logged and forgotten: notifications never stop the daemon.

``--workers`` reuses the protocol: the parent gives its children a private
notify socket of its own and learns from their ``READY=1`` when they serve.
"""

import os
import socket
from collections.abc import Mapping

from twisted.logger import Logger

log = Logger()


def socket_address(name: str) -> str | None:
    """The ``bind``/``sendto`` address for a ``$NOTIFY_SOCKET`` value, None if unusable."""
    if name.startswith("@"):
        return "\0" + name[1:]
    if name.startswith("/"):
        return name
    return None  # vsock and other forms are not used by systemd for services


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to systemd; True when a datagram was sent."""
    env = os.environ if environ is None else environ
    name = env.get("NOTIFY_SOCKET", "")
    if not name:
        return False
    address = socket_address(name)
    if address is None:
        log.warn("NOTIFY_SOCKET={name!r} is not a unix socket name; not notifying", name=name)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.setblocking(False)  # a datagram either fits in the socket buffer or is dropped
            s.sendto(state.encode(), address)
    except OSError as e:
        log.warn("cannot notify systemd ({state!r}) on {name}: {error}",
                 state=state, name=name, error=e)
        return False
    return True


def parse_state(datagram: bytes) -> dict[str, str]:
    """``b"READY=1\\nSTATUS=x"`` → ``{"READY": "1", "STATUS": "x"}``."""
    fields = {}
    for line in datagram.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key] = value
    return fields

"""The serving keys (all stor's own): where to listen, how long to wait, how much to take.

``listen`` is a Twisted server endpoint string (``tcp:8080``,
``tcp:8080:interface=127.0.0.1``, ``unix:/run/stor/http.sock``,
``systemd:domain=INET:index=0``); it is parsed here, when the file is read,
so a bad one is reported with the other problems of the file before anything
listens.  Parsing needs no reactor: endpoints keep the one they are given
until they listen, and the probe below stands in for it.
"""

import ipaddress
from collections.abc import Mapping
from urllib.parse import urlsplit
from dataclasses import dataclass
from typing import Any

from stor.config import values
from stor.config.problems import Problems

KEYS = frozenset({"listen", "header_timeout", "body_timeout", "max_upload_size",
                  "shutdown_grace_period", "sendfile", "server_header", "trusted_proxies",
                  "fleet_peers"})
DEFAULT_LISTEN = "tcp:8080"
DEFAULT_HEADER_TIMEOUT = 30.0
DEFAULT_BODY_TIMEOUT = 120.0
DEFAULT_SHUTDOWN_GRACE = 30.0
DEFAULT_SERVER_HEADER = "stor"
"""No version: a stranger learns nothing to look up (docs/security.rst)."""


@dataclass(frozen=True)
class ServerConfig:
    """How the HTTP side listens and how long it waits."""

    listen: str = DEFAULT_LISTEN
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    max_upload_size: int | None = None
    shutdown_grace_period: float = DEFAULT_SHUTDOWN_GRACE
    """Seconds requests in flight get to finish on SIGTERM; 0 cuts them at once."""
    sendfile: bool = True
    """Large whole files go to plain TCP connections by ``sendfile(2)``; false
    sends every body through twisted.web (to rule it out when debugging)."""
    server_header: str = DEFAULT_SERVER_HEADER
    """The ``Server`` header of every answer (twisted.web's would name its version)."""
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    """Balancers whose ``X-Forwarded-For`` names the client in logs (addresses or CIDR)."""
    fleet_peers: tuple[str, ...] = ()
    """Base URLs of the fleet's other hosts, asked on a miss (:mod:`stor.s3.peers`)."""


def parse_server_config(raw: Mapping[str, object], problems: Problems) -> ServerConfig:
    """The serving keys of ``raw``; whatever is wrong goes to ``problems``."""
    listen = values.string(raw, "listen", DEFAULT_LISTEN, problems)
    problem = listen_problem(listen)
    if problem is not None:
        problems.error("listen", problem)
    return ServerConfig(
        listen=listen,
        header_timeout=values.number(raw, "header_timeout", DEFAULT_HEADER_TIMEOUT, problems),
        body_timeout=values.number(raw, "body_timeout", DEFAULT_BODY_TIMEOUT, problems),
        max_upload_size=values.optional_whole(raw, "max_upload_size", problems, low=1),
        shutdown_grace_period=values.number(raw, "shutdown_grace_period", DEFAULT_SHUTDOWN_GRACE,
                                            problems, above=None, at_least=0.0),
        sendfile=values.switch(raw, "sendfile", True, problems),
        server_header=_server_header(raw, problems),
        trusted_proxies=_networks(raw.get("trusted_proxies"), problems),
        fleet_peers=_peers(raw.get("fleet_peers"), problems),
    )


def _server_header(raw: Mapping[str, object], problems: Problems) -> str:
    """A header value: printable ASCII, at most 200 characters."""
    value = values.string(raw, "server_header", DEFAULT_SERVER_HEADER, problems)
    if not value or len(value) > 200 or not all(" " <= c <= "~" for c in value):
        problems.error("server_header", "must be 1 to 200 printable ASCII characters")
        return DEFAULT_SERVER_HEADER
    return value


def _peers(value: object, problems: Problems) -> tuple[str, ...]:
    """``fleet_peers``: ``["http://10.0.0.2:8080", …]``, the other hosts' stor URLs."""
    key = "fleet_peers"
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.error(key, 'must be a list of URLs like "http://10.0.0.2:8080"')
        return ()
    found = []
    for i, url in enumerate(value):
        parts = urlsplit(url)
        try:
            _ = parts.port
        except ValueError:
            parts = urlsplit("")
        if (parts.scheme not in ("http", "https") or not parts.hostname
                or parts.path not in ("", "/")):
            problems.error(f"{key}[{i}]", f"{url!r} is not a URL like \"http://10.0.0.2:8080\"")
            continue
        found.append(url.rstrip("/"))
    return tuple(found)


def _networks(value: object, problems: Problems
              ) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """``trusted_proxies``: a list of addresses or networks (``10.0.0.5``, ``10.1.0.0/16``)."""
    key = "trusted_proxies"
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.error(key, "must be a list of IP addresses or networks like \"10.0.0.0/8\"")
        return ()
    found = []
    for i, text in enumerate(value):
        try:
            found.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            problems.error(f"{key}[{i}]", f"{text!r} is not an IP address or network")
    return tuple(found)


def listen_problem(description: str) -> str | None:
    """What is wrong with the endpoint string ``description``, or None if start-up can use it.

    ``serverFromString`` checks the syntax and the endpoint type's arguments
    (an SSL endpoint's key and certificate files are read); a TCP port is
    checked against 0-65535 by letting the endpoint "listen" on a
    :class:`_Probe`, which only records the port it is asked for.
    """
    from twisted.internet import endpoints  # no reactor is imported, none is installed

    probe = _Probe()
    try:
        endpoint = endpoints.serverFromString(probe, description)
    except IndexError:  # systemd:…:index=N with fewer sockets passed (LISTEN_FDS)
        return f"{description!r} names a socket systemd did not pass to this process"
    except KeyError as e:  # systemd:…:name=N with no such FileDescriptorName
        return f"{description!r} names a socket systemd did not pass to this process: {e}"
    except (ValueError, TypeError, OSError, AttributeError) as e:
        return f"{description!r} is not a valid Twisted endpoint: {e}"
    tcp = (endpoints.TCP4ServerEndpoint, endpoints.TCP6ServerEndpoint,
           endpoints.SSL4ServerEndpoint)
    if isinstance(endpoint, tcp):
        endpoint.listen(None)
        if probe.port is not None and not 0 <= probe.port <= 65535:
            return f"{description!r}: port {probe.port} is not from 0 to 65535"
    return None


class _Probe:
    """Stands in for the reactor while an endpoint is parsed: it only notes the TCP port asked for."""

    port: int | None = None

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> None:
        self.port = port

    def listenSSL(self, port: int, factory: Any, contextFactory: Any, backlog: int = 50,
                  interface: str = "") -> None:
        self.port = port

"""Who the client is behind a balancer: ``X-Forwarded-For`` from ``trusted_proxies``.

A balancer in front of stor is the TCP peer of every request, so logs and the
DELETE audit line would name the balancer.  When the peer is one of the
configured ``trusted_proxies``, the client is found in ``X-Forwarded-For``
(each proxy appends the address it got the request from): read from the right,
the first address that is not itself a trusted proxy.  A header from any other
peer is ignored (a client can write anything there), and so is an entry that
is not an address (the peer, or the last trusted address before it, is kept).
"""

import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def client_of(peer: str, forwarded: Sequence[bytes] | None,
              trusted: Sequence[Network]) -> str:
    """The client's address as the logs show it (``peer`` unless a trusted proxy forwarded)."""
    if not trusted or not forwarded or not _trusted(peer, trusted):
        return peer
    hops = [h.strip() for value in forwarded for h in value.decode("latin-1").split(",")]
    client = peer
    for hop in reversed(hops):
        if _address(hop) is None:
            break
        client = hop
        if not _trusted(hop, trusted):
            break
    return client


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _trusted(text: str, trusted: Sequence[Network]) -> bool:
    address = _address(text)
    if address is None:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in trusted)

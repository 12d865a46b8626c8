"""The ``statsite`` section: the options of the old service's Net::Statsite::Client.

The old service passed this object as is to ``Net::Statsite::Client->new``,
so its keys mean what they meant there (SPEC §6):

``host``
    default ``localhost``; ``"host:port"`` is accepted too (IO::Socket::INET
    reads a port written after the host, and it wins over ``port``)
``port``
    default 8125
``proto``
    ``udp`` (default) or ``tcp``; anything else stopped the old service
``prefix``
    joined to every key with a dot, when it is true in Perl (``""`` and
    ``"0"`` are no prefix)
``sample_rate``
    below 1, each line is sent with that probability and carries ``|@rate``;
    1 or more (or absent) sends every line without a rate

``statsite`` absent, ``null`` or ``{}`` sends to localhost:8125 over UDP: the
old service always built its client (``%{ $cfg->{statsite} }`` made ``{}`` of a
missing key), and its tests' config has no ``statsite``.  Nothing listening
there costs nothing: a datagram to a closed port is dropped.
"""

import math
from dataclasses import dataclass

from stor.config.address import split_host_port, valid_port
from stor.config.perl import describe, perl_number, perl_string, perl_true
from stor.config.problems import Problems

KEY = "statsite"
KEYS = frozenset({KEY})
KNOWN = frozenset({"host", "port", "proto", "prefix", "sample_rate"})
PROTOCOLS = ("udp", "tcp")


@dataclass(frozen=True)
class StatsiteConfig:
    """Where statsd lines go, how they are sent, and how they are named and sampled."""

    host: str = "localhost"
    port: int = 8125
    proto: str = "udp"
    prefix: str = ""
    """Already Perl-true or empty: a non-empty value is always joined with a dot."""
    sample_rate: float = 1.0


def parse_statsite(value: object, problems: Problems) -> StatsiteConfig:
    """The ``statsite`` value → a :class:`StatsiteConfig` (the client's defaults when absent)."""
    if value is None:
        return StatsiteConfig()
    if not isinstance(value, dict):
        problems.error(KEY, 'must be an object {"host", "port", "proto", "prefix", "sample_rate"}, '
                            f"got {describe(value)}")
        return StatsiteConfig()
    problems.unknown_keys(KEY, value, KNOWN, strict=False,
                          what="a Net::Statsite::Client option")
    port = _port(value.get("port"), problems)
    host, port = _host(value.get("host"), port, problems)
    return StatsiteConfig(
        host=host,
        port=port,
        proto=_proto(value.get("proto"), problems),
        prefix=_prefix(value.get("prefix"), problems),
        sample_rate=_sample_rate(value.get("sample_rate"), problems),
    )


def _port(value: object, problems: Problems) -> int:
    if value is None:
        return 8125
    port = valid_port(value)
    if port is None:
        problems.error(f"{KEY}.port", f"must be a port number (1-65535), got {describe(value)}")
        return 8125
    return port


def _host(value: object, port: int, problems: Problems) -> tuple[str, int]:
    key = f"{KEY}.host"
    if value is None:
        return "localhost", port
    if not isinstance(value, str):
        problems.error(key, f'must be a string "host" or "host:port", got {describe(value)}')
        return "localhost", port
    if not value.strip():
        problems.warn(key, "is empty: sending to localhost")
        return "localhost", port
    try:
        return split_host_port(value.strip(), port)
    except ValueError as e:
        problems.error(key, str(e))
        return "localhost", port


def _proto(value: object, problems: Problems) -> str:
    if value is None:
        return "udp"
    if value not in PROTOCOLS:
        problems.error(f"{KEY}.proto", f'must be "udp" or "tcp", got {describe(value)}')
        return "udp"
    return str(value)


def _prefix(value: object, problems: Problems) -> str:
    text = perl_string(value) if value is not None else ""
    if text is None:
        problems.error(f"{KEY}.prefix", f"must be a string, got {describe(value)}")
        return ""
    return text if perl_true(text) else ""


def _sample_rate(value: object, problems: Problems) -> float:
    key = f"{KEY}.sample_rate"
    if value is None:
        return 1.0
    rate = perl_number(value)
    if rate is None or not math.isfinite(rate):
        problems.error(key, f"must be a number (a fraction of lines to send), got {describe(value)}")
        return 1.0
    if rate <= 0:
        problems.warn(key, f"{describe(value)} sends no metrics at all (as the old client did)")
    elif rate > 1:
        problems.warn(key, f"{describe(value)} is above 1: every line is sent, without a rate")
    return rate

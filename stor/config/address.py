"""``host[:port]`` strings, as the old service's clients read them.

IO::Socket::INET (behind Net::Statsite::Client and Log::Dispatch::Gelf) takes
a port written after the host (``"graylog:5140"``) over the separate port
option, so stor does the same wherever a host name is configured.
"""


def split_host_port(text: str, default_port: int) -> tuple[str, int]:
    """``"host"``, ``"host:port"``, ``"[v6]:port"`` → (host, port); ValueError says what is wrong."""
    host, sep, port = text.rpartition(":")
    if not sep or host.endswith(":") or (host.startswith("[") is not host.endswith("]")):
        host, port = text, ""  # no port, or a bare IPv6 address
    host = host.strip("[]")
    if not host:
        raise ValueError(f"{text!r} has no host name")
    if not port:
        return host, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} has an invalid port")
    return host, int(port)


def valid_port(value: object) -> int | None:
    """A TCP/UDP port from a JSON number or a string of digits (Perl reads both), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and 0 < value < 65536:
        return value
    return None

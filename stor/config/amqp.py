"""The ``rabbitmq_uri`` key (docs/SPEC.md §5): a RabbitMQ URI, with stor's own query parameters.

``exchange`` and ``routing_key`` are stor's parameters (pika rejects unknown
ones, so they are taken out before pika parses the rest); ``heartbeat``
defaults to 60 s instead of pika's "whatever the broker proposes".  An empty
or absent URI, or one whose scheme is not ``amqp``/``amqps``, disables
publishing, as the old service did.
"""

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from stor.config.problems import Problems

KEYS = frozenset({"rabbitmq_uri"})
DEFAULT_EXCHANGE = "stor"
DEFAULT_ROUTING_KEY = "sha"
DEFAULT_HEARTBEAT = 60


@dataclass(frozen=True)
class AmqpConfig:
    """Where requested SHAs are published."""

    url: str
    """The URI for pika: stor's own parameters removed, ``heartbeat`` set."""
    exchange: str = DEFAULT_EXCHANGE
    routing_key: str = DEFAULT_ROUTING_KEY


def split_amqp_uri(uri: str) -> AmqpConfig:
    """The URI for pika, the exchange and the routing key; ValueError if unusable."""
    import pika  # validates the rest of the URI as the publisher will read it

    parts = urlsplit(uri)
    if parts.scheme.lower() not in ("amqp", "amqps"):
        raise ValueError(f"scheme must be amqp or amqps, not {parts.scheme!r}")
    ours: dict[str, str] = {}
    theirs: list[tuple[str, str]] = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in ("exchange", "routing_key"):
            if name in ours:
                raise ValueError(f"URL parameter {name!r} given more than once")
            ours[name] = value
        else:
            theirs.append((name, value))
    if not any(name == "heartbeat" for name, _ in theirs):
        theirs.append(("heartbeat", str(DEFAULT_HEARTBEAT)))
    url = urlunsplit(parts._replace(query=urlencode(theirs)))
    pika.URLParameters(url)
    return AmqpConfig(url, ours.get("exchange") or DEFAULT_EXCHANGE,
                      ours.get("routing_key") or DEFAULT_ROUTING_KEY)


def parse_amqp(value: object, problems: Problems, key: str = "rabbitmq_uri") -> AmqpConfig | None:
    """The ``rabbitmq_uri`` value → an :class:`AmqpConfig`, or None when publishing is off."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        problems.error(key, f"must be a string, got {type(value).__name__}")
        return None
    # The URI holds the broker's password: messages name the problem, never the value.
    try:
        scheme = urlsplit(value).scheme.lower()
    except ValueError:
        scheme = ""
    if scheme not in ("amqp", "amqps"):
        shown = f"the scheme {scheme!r}" if scheme.isalnum() else "no scheme"
        problems.warn(key, f"has {shown}, not amqp:// or amqps://: publishing is off")
        return None  # the old service ignored other schemes; so do we, but say so
    try:
        return split_amqp_uri(value)
    except Exception as e:  # pika raises ValueError and friends for a bad URI
        problems.error(key, f"is not a valid amqp URI ({type(e).__name__}: host, port, "
                            "virtual host or query parameters)")
        return None

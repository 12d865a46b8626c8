"""Who may change what: ``basic_auth`` (uploads, the old service's key) and ``delete_auth`` (stor's).

``basic_auth`` is the literal ``user:password`` a client's Basic credentials
must equal, as in the old service (which compared the request's userinfo with
it as strings).  Absent or empty, nobody can upload: the old service answered
every upload 401, and so does stor; that is how a read-only host is
configured, so it is a warning, not an error.  A number is the string Perl
made of it.

``delete_auth`` is stor's: absent, ``DELETE`` is not allowed (405).

``secret`` (the old service's Mojolicious cookie secret) is accepted and not
used: stor signs no cookies.

These values are credentials: a message about them names the key and the
problem, never the value (it is logged at every start, to every output).
"""

from collections.abc import Mapping
from dataclasses import dataclass

from stor.config.perl import kind, perl_string
from stor.config.problems import Problems

KEYS = frozenset({"basic_auth", "delete_auth", "secret"})


@dataclass(frozen=True)
class AuthConfig:
    """The credentials each changing method needs; None: nobody may."""

    basic_auth: str | None = None
    delete_auth: str | None = None


def parse_auth(raw: Mapping[str, object], problems: Problems) -> AuthConfig:
    """The credential keys of ``raw``; whatever is wrong goes to ``problems``."""
    return AuthConfig(basic_auth=_basic_auth(raw.get("basic_auth"), problems),
                      delete_auth=_delete_auth(raw.get("delete_auth"), problems))


def _basic_auth(value: object, problems: Problems) -> str | None:
    key = "basic_auth"
    text = "" if value is None else perl_string(value)
    if text is None:
        problems.error(key, f'must be a string "user:password", got {kind(value)}')
        return None
    if not text:
        problems.warn(key, "is not set: this host is read-only (every upload gets 401)")
        return None
    if ":" not in text:
        problems.warn(key, 'must be user:password (it has no ":"): only a client sending '
                           "exactly this value as its user name can upload")
    return text


def _delete_auth(value: object, problems: Problems) -> str | None:
    key = "delete_auth"
    if value is None:
        return None
    if not isinstance(value, str):
        problems.error(key, f'must be a string "user:password", got {kind(value)}')
        return None
    if ":" not in value or value.startswith(":"):
        problems.error(key, 'must be "user:password" (a non-empty user, a ":", a password)')
        return None
    return value

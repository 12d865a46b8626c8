"""The old service's value meanings: its config was read by Perl.

Perl has no booleans: ``0``, ``"0"``, ``""`` and ``undef`` (JSON ``null``)
are false, and every other scalar is true.  Config files written for the old
service say ``"s3_enabled": 0`` or ``"stderr": 1``, and mean it.
"""

import json


def perl_true(value: object) -> bool:
    """Whether Perl would take ``value`` (as decoded from JSON) as true."""
    if value is None or value is False:
        return False
    if value is True:
        return True
    if isinstance(value, (int, float)):
        return value != 0
    if isinstance(value, str):
        return value not in ("", "0")
    return True  # a list or an object is a reference: always true in Perl


def describe(value: object) -> str:
    """``value`` as the config file spells it, for an error message."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def kind(value: object) -> str:
    """What sort of JSON value ``value`` is, without its content: for keys holding secrets,
    whose values are never printed (docs/security.rst)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "null" if value is None else type(value).__name__


def perl_number(value: object) -> float | None:
    """``value`` as Perl would use it as a number, or None when Perl would not.

    JSON numbers are numbers; a string that looks like a decimal number
    (``"8125"``, ``" 0.5"``) is one too, as Perl numifies it.  Anything else
    (a word, a list, ``null``, a boolean) is None: Perl would read 0 with a
    warning, which no config file means.
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text and all(c in "0123456789.+-eE" for c in text):
            try:
                return float(text)
            except ValueError:
                return None
    return None


def perl_string(value: object) -> str | None:
    """A scalar as Perl would interpolate it (``3`` → ``"3"``, ``0.5`` → ``"0.5"``); None if not a scalar."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.15g}"
    return None

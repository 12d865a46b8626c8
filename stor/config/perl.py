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

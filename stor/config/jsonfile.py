"""Reading the config file: strict UTF-8 JSON, with a key given twice in one object an error.

JSON parsers (Perl's decode_json as Python's) keep the last of two equal keys
without a word, so ``{"basic_auth": "a:b", …, "basic_auth": ""}`` would
quietly make a host read-only.  The document is read with every pair kept
and then turned into plain dicts, naming each repeated key with its path.
"""

import json

from stor.config.problems import Problems


class _Pairs(list[tuple[str, object]]):
    """A JSON object as read: every (key, value) pair, repeats included."""


def read_json(path: str, problems: Problems) -> object | None:
    """The document in ``path``, or None when it cannot be read or parsed (recorded in ``problems``)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        problems.error("", f"cannot read config file {path}: {e.strerror}")
        return None
    except UnicodeDecodeError as e:
        problems.error("", f"{path} is not UTF-8 text: {e}")
        return None
    try:
        document = json.loads(text, object_pairs_hook=_Pairs)
    except json.JSONDecodeError as e:
        problems.error("", f"{path} is not valid JSON: {e}")
        return None
    return plain(document, "", problems)


def plain(value: object, where: str, problems: Problems) -> object:
    """``value`` with every object a dict; a key repeated in one object is an error at its path."""
    if isinstance(value, _Pairs):
        result: dict[str, object] = {}
        repeated: set[str] = set()
        for key, item in value:
            path = f"{where}.{key}" if where else key
            if key in result and key not in repeated:
                repeated.add(key)
                problems.error(path, "is given more than once in the same object "
                                     "(only the last would count)")
            result[key] = plain(item, path, problems)
        return result
    if isinstance(value, list):
        return [plain(item, f"{where}[{i}]", problems) for i, item in enumerate(value)]
    return value

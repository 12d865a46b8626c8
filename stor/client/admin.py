"""``stor delete``, ``stor du`` and ``stor info``: a host's operator tools over its HTTP API.

``du`` and ``info`` read the JSON ``/status`` (one ``statvfs`` per storage on
the server, never a walk of the files): what ``df`` would say of each
storage, the version, the uptime and the S3 outbox's backlog, as ``mc admin
info`` gives for MinIO.  Listing every SHA of a host is not an HTTP request
(see docs/client.rst: ``find`` on the host).
"""

import json
from typing import Any, TextIO

from stor.client.errors import ItemFailed
from stor.client.progress import clock_time, human
from stor.client.report import Reporter, Result
from stor.client.session import Session
from stor.client.sink import read_text


async def delete_sha(session: Session, sha: str, reporter: Reporter) -> Result:
    """``DELETE /<sha>`` with the delete credentials; 204 is the only success."""
    url = session.settings.url(sha)
    try:
        response = await session.delete(sha)
    except ItemFailed as e:
        return Result(sha, url, e.status, False, e.reason)
    text = await read_text(response)
    if response.code == 204:
        return Result(sha, url, "204", True)
    first = text.strip().splitlines()[0] if text.strip() else ""
    return Result(sha, url, str(response.code), False, first)


async def status_document(session: Session) -> dict[str, Any]:
    """The host's JSON ``/status`` (its 503 too: a failing storage is still reported)."""
    response = await session.status()
    text = await read_text(response)
    try:
        doc = json.loads(text)
    except ValueError:
        raise ItemFailed(f"/status did not answer JSON ({response.code}): {text[:200]!r}") \
            from None
    if not isinstance(doc, dict) or not isinstance(doc.get("storages"), list):
        raise ItemFailed(f"/status answered JSON without storages ({response.code})")
    return doc


def du_lines(doc: dict[str, Any]) -> list[str]:
    """``used total free use% storage`` per storage, ``df -h`` style."""
    lines = [f"{'used':>10} {'total':>10} {'free':>10} {'use%':>5} storage"]
    for s in doc["storages"]:
        free, total = s.get("free_bytes"), s.get("size_bytes")
        if isinstance(free, int) and isinstance(total, int) and total > 0:
            used = total - free
            lines.append(f"{human(used):>10} {human(total):>10} {human(free):>10} "
                         f"{100 * used // total:>4}% {s['path']}")
        else:
            lines.append(f"{'-':>10} {'-':>10} {'-':>10} {'-':>5} {s['path']}")
    return lines


def info_lines(url: str, doc: dict[str, Any]) -> list[str]:
    """A host at a glance: version, uptime, health, every storage, the S3 backlog."""
    uptime = doc.get("uptime_seconds")
    lines = [f"{url}",
             f"  version: {doc.get('version', 'unknown')}",
             f"  uptime: {clock_time(uptime) if isinstance(uptime, (int, float)) else 'unknown'}",
             f"  status: {'ok' if doc.get('ok') else 'FAILING'}"]
    lines.append("  storages:")
    lines += ["    " + line for line in du_lines(doc)]
    for s in doc["storages"]:
        if s.get("reason"):
            lines.append(f"    {s['path']}: {s['reason']}")
    outbox = doc.get("s3_outbox")
    if isinstance(outbox, dict):
        age = outbox.get("oldest_age")
        lines.append(f"  s3 outbox: {outbox.get('depth', '?')} waiting"
                     + (f", oldest {clock_time(age)} old" if isinstance(age, (int, float)) else ""))
    return lines


def print_lines(out: TextIO, lines: list[str]) -> None:
    out.write("".join(line + "\n" for line in lines))

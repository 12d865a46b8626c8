"""Rows for what issue 18 made answers cost: HEAD and duplicate POSTs (``compare.py``).

A HEAD now answers what a GET would: a small file is read and hashed, a large
one answers from a verification the process remembers for that very file
(else it is hashed).  A duplicate POST now hashes the stored replicas and
fsyncs them and their directory chain before its 200.  These rows measure
both builds on the same files, back to back:

``head4k``     HEADs of 1000 warm 4 KiB files, one keep-alive connection, req/s
``head256m``   HEADs of one 256 MiB file (after a first, untimed one), req/s
``dup4k``      POSTs of an already stored 4 KiB file, files/s
``dup256m``    POST of an already stored 256 MiB file with its body, MB/s
``dup256me``   the same with ``Expect: 100-continue`` (answered before the body), req/s
"""

from __future__ import annotations

import http.client
import os
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from harness import BenchError, Server
from rounds import Measure
from rows import make_big_file, make_small_files

AUTH = "Basic d3JpdGVyOndyaXRlcl9wYXNz"  # writer:writer_pass, the bench's config


def _conn(server: Server) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", server.port, timeout=600)


def heads_measure(server: Server, shas: Sequence[str], size: int, repeat: int = 1
                  ) -> Callable[[], Measure]:
    """HEAD each of ``shas`` ``repeat`` times on one connection; req/s."""
    def measure() -> Measure:
        server.check_alive()
        conn = _conn(server)
        start = time.perf_counter()
        for _ in range(repeat):
            for sha in shas:
                conn.request("HEAD", f"/{sha}")
                r = conn.getresponse()
                r.read()
                if r.status != 200 or r.getheader("content-length") != str(size):
                    raise BenchError(f"{server.name}: HEAD /{sha} answered {r.status}")
        seconds = time.perf_counter() - start
        conn.close()
        return Measure(len(shas) * repeat / seconds, f"{server.name}")

    return measure


def dup_posts_measure(server: Server, sha: str, body: bytes | Path, count: int,
                      expect: bool = False) -> Callable[[], Measure]:
    """POST an already stored file ``count`` times; files/s (MB/s for a Path body)."""
    size = body.stat().st_size if isinstance(body, Path) else len(body)

    def one() -> int:
        if expect:
            return _expect_post(server.port, sha, size)
        conn = _conn(server)
        try:
            if isinstance(body, Path):
                with open(body, "rb") as f:
                    conn.request("POST", f"/{sha}", body=f,
                                 headers={"Authorization": AUTH, "Content-Length": str(size)})
                    r = conn.getresponse()
            else:
                conn.request("POST", f"/{sha}", body=body, headers={"Authorization": AUTH})
                r = conn.getresponse()
            r.read()
            return r.status
        finally:
            conn.close()

    def measure() -> Measure:
        server.check_alive()
        start = time.perf_counter()
        for _ in range(count):
            if (status := one()) != 200:
                raise BenchError(f"{server.name}: duplicate POST answered {status}\n"
                                 f"{server.log_tail()}")
        seconds = time.perf_counter() - start
        if isinstance(body, Path) and not expect:
            return Measure(size * count / seconds / 1e6, f"{server.name}")
        return Measure(count / seconds, f"{server.name}")

    return measure


def _expect_post(port: int, sha: str, size: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=600) as sock:
        sock.sendall(f"POST /{sha} HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n"
                     f"Authorization: {AUTH}\r\nExpect: 100-continue\r\n\r\n".encode())
        head = sock.recv(65536)
        return int(head.split()[1])


def store_small(pairs, count: int = 1000) -> tuple[list[str], bytes]:  # type: ignore[no-untyped-def]
    return make_small_files(pairs, None, count)


def trust_rows(selected: Sequence[str], servers: tuple[Server, Server], pairs,  # type: ignore[no-untyped-def]
               big_size: int, workdir: Path, goal: float) -> dict[str, tuple[str, Callable]]:
    """The builders of the rows above, for ``compare.build_rows``."""
    from rounds import Row

    new, old = servers

    def head4k() -> Row:
        shas, _ = make_small_files(pairs, None, 1000)
        return Row("HEAD 4 KiB", "req/s", "new", "old", goal,
                   heads_measure(new, shas, 4096), heads_measure(old, shas, 4096))

    def head_big() -> Row:
        sha, _ = make_big_file(pairs[0], big_size)
        for server in servers:
            heads_measure(server, [sha], big_size)()  # the first: verified (hashed) once
        return Row("HEAD big, after the first", "req/s", "new", "old", goal,
                   heads_measure(new, [sha], big_size, 200),
                   heads_measure(old, [sha], big_size, 200))

    def dup4k() -> Row:
        data = os.urandom(4096)
        import hashlib
        sha = hashlib.sha256(data).hexdigest()
        for storage in pairs[0]:
            target = storage / sha[:2].upper() / sha[2:4].upper() / sha[4:6].upper()
            target.mkdir(parents=True, exist_ok=True)
            (target / f"{sha.upper()}.dat").write_bytes(data)
        return Row("POST duplicate 4 KiB", "files/s", "new", "old", goal,
                   dup_posts_measure(new, sha, data, 200), dup_posts_measure(old, sha, data, 200))

    def dup_big(expect: bool) -> Callable[[], Row]:
        def build() -> Row:
            sha, finals = make_big_file(pairs[0], big_size)
            name = "POST duplicate big" + (", Expect" if expect else "")
            unit = "req/s" if expect else "MB/s"
            count = 5 if expect else 1
            return Row(name, unit, "new", "old", goal,
                       dup_posts_measure(new, sha, finals[0], count, expect),
                       dup_posts_measure(old, sha, finals[0], count, expect))
        return build

    return {"head4k": ("HEAD 4 KiB", head4k), "head256m": ("HEAD big", head_big),
            "dup4k": ("POST duplicate 4 KiB", dup4k),
            "dup256m": ("POST duplicate big", dup_big(False)),
            "dup256me": ("POST duplicate big, Expect", dup_big(True))}


# --------------------------------------------------------------------------
# the same rows in ``make bench`` (run.py): stor against a ceiling, not an old build


def web_heads_measure(web: Server, names: Sequence[str], size: int, repeat: int = 1
                      ) -> Callable[[], Measure]:
    """HEADs of files under ``twistd web`` (``names``: URL paths without the slash)."""
    return heads_measure(web, list(names), size, repeat)


def hash_passes_measure(path: Path, unit_mb: bool) -> Callable[[], Measure]:
    """One core's sha256 over the cached file: MB/s, or passes per second."""
    from ceilings import sha256_pass

    def measure() -> Measure:
        seconds = sha256_pass(path)[0]
        size = path.stat().st_size
        return Measure(size / seconds / 1e6 if unit_mb else 1 / seconds, "sha256 one pass")

    return measure


def bench_rows(stor: Server, pairs, big_size: int, web_root: Path,  # type: ignore[no-untyped-def]
               web: Callable[[], Server], workdir: Path, goals: dict[str, float | None]
               ) -> dict[str, tuple[str, Callable]]:  # type: ignore[type-arg]
    """``make bench``'s HEAD and duplicate-POST rows, each against what it must cost:

    ``head4k``/``head256m``: twistd web's HEAD of the same files (a stat, no hash);
    ``dup4k``: a *new* 4 KiB durable store by one loop (a duplicate must not cost more);
    ``dup256m``/``dup256me``: one core's sha256 of the file (a duplicate 200 names only
    replicas it hashed: the two copies are read and hashed, side by side).
    """
    import hashlib

    from rounds import Row
    from rows import small_ceiling_measure

    def head4k() -> Row:
        shas, _ = make_small_files(pairs, web_root, 1000)
        names = [f"{sha}.dat" for sha in shas]
        return Row("HEAD 4 KiB", "req/s", "stor", "twistd web", goals["head4k"],
                   heads_measure(stor, shas, 4096), web_heads_measure(web(), names, 4096))

    def head_big() -> Row:
        sha, finals = make_big_file(pairs[0], big_size)
        link = web_root / "big.dat"
        if not link.exists():
            os.link(finals[0], link)
        heads_measure(stor, [sha], big_size)()  # the first: verified (hashed) once
        return Row("HEAD big, after the first", "req/s", "stor", "twistd web",
                   goals["head256m"], heads_measure(stor, [sha], big_size, 200),
                   web_heads_measure(web(), ["big.dat"], big_size, 200))

    def dup4k() -> Row:
        data = os.urandom(4096)
        sha = hashlib.sha256(data).hexdigest()
        for storage in pairs[0]:
            target = storage / sha[:2].upper() / sha[2:4].upper() / sha[4:6].upper()
            target.mkdir(parents=True, exist_ok=True)
            (target / f"{sha.upper()}.dat").write_bytes(data)
        return Row("POST duplicate 4 KiB", "files/s", "stor", "new, loop", goals["dup4k"],
                   dup_posts_measure(stor, sha, data, 200),
                   small_ceiling_measure(4096, 200, pairs[0]))

    big: dict[str, tuple[str, list[Path]]] = {}

    def big_file() -> tuple[str, list[Path]]:
        if "file" not in big:
            big["file"] = make_big_file(pairs[1], big_size)
        return big["file"]

    def dup_big(expect: bool) -> Callable[[], Row]:
        def build() -> Row:
            sha, finals = big_file()
            name = "POST duplicate big" + (", Expect" if expect else "")
            unit = "req/s" if expect else "MB/s"
            count = 3 if expect else 1
            return Row(name, unit, "stor", "sha256", goals["dup256me" if expect else "dup256m"],
                       dup_posts_measure(stor, sha, finals[0], count, expect),
                       hash_passes_measure(finals[0], not expect))
        return build

    return {"head4k": ("HEAD 4 KiB", head4k), "head256m": ("HEAD big", head_big),
            "dup4k": ("POST duplicate 4 KiB", dup4k),
            "dup256m": ("POST duplicate big", dup_big(False)),
            "dup256me": ("POST duplicate big, Expect", dup_big(True))}

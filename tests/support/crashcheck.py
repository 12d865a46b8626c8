"""A crash-consistency check: was every acknowledged upload durable when it was answered?

Input: the system calls of a stor process recorded with ``strace -f -yy``
(:data:`STRACE_CALLS`), and the answers a test received (:class:`Ack`: the
client's port and the paths the answer named, or removed).  The check replays
the trace under a *conservative persistence model*, the one a power cut can
hold us to, with nothing assumed from ext4's heuristics:

* a directory entry (``mkdir``, ``rename``, ``open(O_CREAT)``, ``unlink``) is
  durable only once a successful ``fsync`` of its parent directory *began
  after* the change completed;
* a file's data and size only once a successful ``fsync``/``fdatasync`` of the
  file began after its last write (``write``, ``pwrite``, ``ftruncate``,
  ``fallocate``) completed; a ``rename`` carries the data's state to the new name;
* ``syncfs`` on any fd of a filesystem makes everything changed on it before
  the call began durable;
* a failed call, an injected one (``strace -e inject``), ``sync_file_range``
  and the page cache count for nothing;
* an entry whose creation is not in the trace (it was there before) needs an
  fsync of its parent in the trace all the same: its creator may have died
  before fsyncing it.

"Durable when answered" means: the fsync ended before the first ``write`` /
``sendmsg`` to the client's socket carrying ``HTTP/1.1 2`` (record with ``-s
1024`` or more, so the answer's paths are in the trace).  For an upload's
answer (201 or 200) each named path must have its whole chain durable: ``AA``
in the storage, ``BB`` in ``AA``, ``CC`` in ``BB``, the ``.dat`` in ``CC``, and
its bytes.  For a DELETE's 204, each removal the trace shows of the SHA's
paths before the answer must be durable.

With ``--workers``, strace follows every worker (``-p`` each, ``-f`` their
threads): an entry made by one process and made durable, or answered, by a
sibling is judged on the one trace, since durability is the filesystem's.

Line order in one ``strace -o`` file is the order the tracer saw the events,
so the check works on line numbers: a call split by another thread
(``<unfinished ...>`` / ``<... resumed>``) spans from its first line to its last.
"""

import os
import re
from collections import defaultdict
from dataclasses import dataclass, field

STRACE_CALLS = ("mkdir,mkdirat,open,openat,creat,rename,renameat,renameat2,unlink,unlinkat,"
                "rmdir,fsync,fdatasync,syncfs,write,pwrite64,writev,pwritev,pwritev2,"
                "ftruncate,fallocate,sendmsg,sendto")
"""The calls to record (``strace -e trace=...``)."""


@dataclass(frozen=True)
class Ack:
    """An answer the client received: the paths it promised, on ``client_port``'s connection."""

    client_port: int
    paths: tuple[str, ...]
    storages: tuple[str, ...]
    """The configured storages (where each path's chain of entries begins)."""
    removal: bool = False
    """A DELETE's 204: ``paths`` are the SHA's paths on every storage, promised gone."""


@dataclass
class Call:
    pid: str
    name: str
    args: str
    result: str
    start: int
    end: int

    @property
    def ok(self) -> bool:
        return not self.result.startswith("-1") and "INJECTED" not in self.result \
            and self.result != "?"


_CALL = re.compile(r"^(\d+)\s+(\w+)\((.*)\)\s+=\s+(.*)$")
_START = re.compile(r"^(\d+)\s+(\w+)\((.*?)\s*<unfinished \.\.\.>$")
_RESUMED = re.compile(r"^(\d+)\s+<\.\.\. (\w+) resumed>(.*)\)\s+=\s+(.*)$")


def parse(lines: list[str]) -> list[Call]:
    """The calls of a trace, split calls joined, each with its first and last line."""
    calls: list[Call] = []
    pending: dict[str, tuple[str, str, int]] = {}
    for i, line in enumerate(lines):
        if m := _START.match(line):
            pending[m[1]] = (m[2], m[3], i)
        elif m := _RESUMED.match(line):
            name, args, start = pending.pop(m[1], (m[2], "", i))
            calls.append(Call(m[1], name, args + m[3], m[4], start, i))
        elif m := _CALL.match(line):
            calls.append(Call(m[1], m[2], m[3], m[4], i, i))
    return sorted(calls, key=lambda c: c.end)


_FD = re.compile(r"^-?\d+<(.*?)>(?:,|$)")
_AT_FD = re.compile(r"^(AT_FDCWD|-?\d+)(?:<(.*?)>)?,\s*")
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')


def _fd_path(args: str) -> str | None:
    m = _FD.match(args)
    return m[1] if m else None


def _resolve(dirfd_path: str | None, name: str, cwd: str) -> str:
    return os.path.normpath(os.path.join(dirfd_path or cwd, name))


def _path_args(call: Call, cwd: str) -> list[str]:
    """The paths a path-taking call names, resolved (``*at`` calls against their dirfd)."""
    args, paths = call.args, []
    at = call.name.endswith("at") or call.name.startswith("renameat")
    while args:
        dirfd = None
        if at and (m := _AT_FD.match(args)):
            dirfd = m[2]  # with -yy, AT_FDCWD too shows its directory
            args = args[m.end():]
        s = _STRING.match(args)
        if not s:
            break
        paths.append(_resolve(dirfd, s[1], cwd))
        args = args[s.end():].lstrip(", ")
        if not at:
            if not args.startswith('"'):
                break
    return paths


def resolved_paths(line: str, cwd: str = "/") -> list[str]:
    """The paths one whole trace line's call names, ``*at`` calls resolved against
    their directory descriptors (``-y``): what ``renameat(5</d/.stor-tmp>, "t", …)`` means."""
    calls = parse([line])
    return _path_args(calls[0], cwd) if calls else []


@dataclass
class _State:
    entry_changed: dict[str, int] = field(default_factory=dict)
    """path -> line by which its latest entry change (create, rename, unlink) completed."""
    data_changed: dict[str, int] = field(default_factory=dict)
    data_synced: dict[str, tuple[int, int]] = field(default_factory=dict)
    dir_fsyncs: dict[str, list[tuple[int, int]]] = field(
        default_factory=lambda: defaultdict(list))
    syncfs: list[tuple[str, int, int]] = field(default_factory=list)


class Trace:
    """A replayed trace: ask it whether an :class:`Ack` was durable when it was answered."""

    def __init__(self, lines: list[str], cwd: str = "/") -> None:
        self.calls = parse(lines)
        self._cwd = cwd

    def violations(self, acks: list[Ack]) -> list[str]:
        """Every way an acknowledged answer was not durable when written (empty: all good)."""
        found: list[str] = []
        for ack in acks:
            answer = self._answer_line(ack)
            if answer is None:
                found.append(f"port {ack.client_port}: no answer in the trace")
                continue
            state = self._replay(until=answer)
            for path in ack.paths:
                found += [f"{path}: {v}" for v in self._check(state, path, ack, answer)]
        return found

    def answered(self, ack: Ack) -> bool:
        """Whether the trace holds the whole call that wrote ``ack``'s answer (strace
        writes a split call's end only when it returns: detach before, and it is lost)."""
        return self._answer_line(ack) is not None

    def injected(self) -> int:
        """How many calls the tracer suppressed (``inject``)."""
        return sum("INJECTED" in c.result for c in self.calls)

    def _answer_line(self, ack: Ack) -> int | None:
        """Where the answer to ``ack`` began to be written: found by the client's port,
        or, when strace could not name the socket's ends (it then shows only its
        inode, now and then), by the first path the answer's body names."""
        answers = [c for c in self.calls if c.name in ("write", "writev", "sendmsg", "sendto")
                   and c.ok and "HTTP/1.1 2" in c.args]
        for call in answers:
            if f":{ack.client_port}]>" in call.args.split(",", 1)[0]:
                return call.start
        for call in answers:
            if not ack.removal and ack.paths and ack.paths[0] in call.args:
                return call.start
        return None

    def _replay(self, until: int) -> _State:
        """The state of the model at line ``until`` (calls ended before it)."""
        state = _State()
        renamed_from: dict[str, str] = {}
        for call in self.calls:
            if call.end >= until or not call.ok:
                continue
            self._apply(state, call, renamed_from)
        return state

    def _apply(self, state: _State, call: Call, renamed_from: dict[str, str]) -> None:
        name = call.name
        if name in ("mkdir", "mkdirat", "unlink", "unlinkat", "rmdir", "creat"):
            for path in _path_args(call, self._cwd)[:1]:
                state.entry_changed[path] = call.end
                if name == "creat":
                    state.data_changed[path] = call.end
        elif name in ("open", "openat") and "O_CREAT" in call.args:
            for path in _path_args(call, self._cwd)[:1]:
                state.entry_changed[path] = call.end  # conservative: it may have been created
        elif name.startswith("rename"):
            paths = _path_args(call, self._cwd)
            if len(paths) == 2:
                old, new = paths
                state.entry_changed[old] = state.entry_changed[new] = call.end
                for table in (state.data_changed, state.data_synced):
                    if old in table:
                        table[new] = table.pop(old)
                    else:
                        table.pop(new, None)
        elif name in ("write", "pwrite64", "writev", "pwritev", "pwritev2", "ftruncate",
                      "fallocate"):
            path = _fd_path(call.args)
            if path is not None and path.startswith("/"):
                state.data_changed[path] = call.end
        elif name in ("fsync", "fdatasync"):
            path = _fd_path(call.args)
            if path is not None:
                state.data_synced[path] = (call.start, call.end)
                state.dir_fsyncs[path].append((call.start, call.end))
        elif name == "syncfs":
            path = _fd_path(call.args)
            if path is not None:
                state.syncfs.append((path, call.start, call.end))

    def _check(self, state: _State, path: str, ack: Ack, answer: int) -> list[str]:
        problems = []
        for entry in ([path] if ack.removal else _chain(path, ack.storages)):
            if ack.removal and entry not in state.entry_changed:
                continue  # nothing removed here in the trace
            if not self._entry_durable(state, entry):
                problems.append(f"entry {entry} not durable in {os.path.dirname(entry)}")
        if not ack.removal and not self._data_durable(state, path):
            problems.append("data not fsynced")
        return problems

    def _entry_durable(self, state: _State, entry: str) -> bool:
        changed = state.entry_changed.get(entry, -1)
        parent = os.path.dirname(entry)
        if any(start > changed for start, _ in state.dir_fsyncs.get(parent, [])):
            return True
        return self._synced_fs(state, entry, changed)

    def _data_durable(self, state: _State, path: str) -> bool:
        changed = state.data_changed.get(path, -1)
        synced = state.data_synced.get(path)
        if synced is not None and synced[0] > changed:
            return True
        return self._synced_fs(state, path, changed)

    def _synced_fs(self, state: _State, path: str, changed: int) -> bool:
        dev = _device(path)
        return any(start > changed and _device(p) == dev for p, start, _ in state.syncfs)


def _chain(path: str, storages: tuple[str, ...]) -> list[str]:
    """The entries from the storage down to ``path``: ``AA``, ``AA/BB``, ``AA/BB/CC``, the file."""
    storage = next(s for s in storages if path.startswith(s.rstrip("/") + "/"))
    entries, current = [], path
    while current != storage.rstrip("/"):
        entries.append(current)
        current = os.path.dirname(current)
    return entries[::-1]


def _device(path: str) -> int:
    while True:
        try:
            return os.stat(path).st_dev
        except OSError:
            path = os.path.dirname(path)

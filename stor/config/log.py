"""The ``log`` section: where log events go besides twistd's own log.

Two forms are read:

- the old service's: a Log::Dispatch ``outputs`` list (the old service passed
  the value as is to ``Log::Dispatch->new(outputs => …)``), each entry
  ``[Class, key, value, key, value, …]``, or the older pairs form
  ``[Class, {key: value, …}, Class, {…}]``::

      "log": [["Gelf", "min_level", "info",
               "socket", {"host": "graylog", "port": 12201, "protocol": "udp"},
               "additional_fields", {"facility": "stor"}],
              ["File", "min_level", "info", "filename", "/var/log/stor/stor.log", "mode", "append"]]

  ``Gelf``, ``Screen``, ``File`` (and ``File::Locked``), ``Syslog`` and
  ``Null`` keep their meanings (see :class:`GelfOutput` and the others); a
  class stor does not know, or a parameter it does not know, is a warning.
  ``[]`` (the old service's tests) means no outputs.

- stor's own, which the old service cannot start with::

      "log": {"gelf": {"host": "graylog:12201", "level": "info",
                       "facility": "stor", "fields": {"env": "prod"}}}

  Only stor defines this form, so a key it does not know (``"glef"``) is an
  error naming the nearest one, not a warning.

``null`` or absent means no outputs.  Levels are Log::Dispatch's, as numbers
0 (debug) to 7 (emergency): :data:`LEVELS`.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

from stor.config.address import split_host_port, valid_port
from stor.config.perl import describe, perl_number, perl_string, perl_true
from stor.config.problems import Problems, did_you_mean

KEY = "log"
KEYS = frozenset({KEY, "log_level", "access_log_skip"})
OWN_LEVELS = ("debug", "info", "warn", "error", "critical")
"""``log_level``: twisted.logger's levels, for stor's own log (stdout, the journal)."""
DEFAULT_ACCESS_SKIP = ("/health/",)

LEVELS = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
"""Log::Dispatch's levels; an output's ``min_level``/``max_level`` are indexes into this."""
LEVEL_ALIASES = {"warn": "warning", "err": "error", "crit": "critical", "emerg": "emergency"}
DEBUG, EMERGENCY = 0, 7

GELF_PORT = 12201
GELF_LAN_CHUNK = 8152
"""Log::GELF::Util's ``lan`` chunk size (bytes of message per chunk)."""
GELF_WAN_CHUNK = 1420
STOR_GELF_CHUNK = 8192 - 12
"""stor's own form: datagrams of at most 8 KiB, the 12-byte chunk header included."""

SYSLOG_FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6,
    "news": 7, "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11,
    **{f"local{i}": 16 + i for i in range(8)},
}
DEV_LOG = "/dev/log"


@dataclass(frozen=True, kw_only=True)
class Output:
    """What every Log::Dispatch output has: the levels it takes and where it was configured."""

    key: str
    """Where in the config it is (``log[0]``), for messages about it."""
    min_level: int = DEBUG
    max_level: int = EMERGENCY

    def accepts(self, level: int) -> bool:
        return self.min_level <= level <= self.max_level


@dataclass(frozen=True, kw_only=True)
class GelfOutput(Output):
    """Log::Dispatch::Gelf: GELF 1.1 to Graylog over UDP (chunked) or TCP (NUL-framed)."""

    host: str
    port: int = GELF_PORT
    protocol: str = "udp"
    additional_fields: dict[str, object] = field(default_factory=dict)
    """Sent as ``_<name>`` on every message (``{"facility": "stor"}`` → ``_facility``)."""
    source: str | None = None
    """The GELF ``host`` field; None: this machine's host name."""
    compress: str = "none"
    """``none`` (Log::Dispatch::Gelf's default), ``gzip`` (its ``compress``), ``zlib`` (stor's form)."""
    chunk_size: int = 0
    """Message bytes per UDP chunk; 0: one datagram (chunked at the LAN size only if too big for one)."""
    full_message: bool = True
    """Always send ``full_message`` (the Perl module does); False: only when it says more."""


@dataclass(frozen=True, kw_only=True)
class ScreenOutput(Output):
    """Log::Dispatch::Screen: one line per event on stderr (its default) or stdout."""

    stderr: bool = True


@dataclass(frozen=True, kw_only=True)
class FileOutput(Output):
    """Log::Dispatch::File: one line per event appended to ``filename``."""

    filename: str
    append: bool = False
    """False: the file is emptied when stor opens it at start (Log::Dispatch's ``>``)."""
    close_after_write: bool = False
    lazy_open: bool = False
    permissions: int | None = None
    """chmod'ed to this after the first open (a decimal number, as Perl read it: 420 = 0644)."""
    stamped: bool = False
    """Each line starts with the time, the pid and the level (``stamp``; stor's own form's
    ``file`` always).  Off, a line is the message alone, as Log::Dispatch::File wrote it."""


@dataclass(frozen=True, kw_only=True)
class SyslogOutput(Output):
    """Log::Dispatch::Syslog: RFC 3164 datagrams to the local syslog socket (or a UDP host)."""

    ident: str = "stor"
    with_pid: bool = False
    """``logopt`` names ``pid``: ``ident[pid]:``."""
    facility: int = SYSLOG_FACILITIES["user"]
    socket: str | tuple[str, int] = DEV_LOG
    """A unix socket path, or (host, port) for syslog over UDP."""


@dataclass(frozen=True)
class LogConfig:
    """The outputs the ``log`` value names, and which form named them."""

    outputs: tuple[Output, ...] = ()
    form: str = "none"
    """``log-dispatch`` (the old service's list), ``stor`` (``{"gelf": …}``) or ``none``."""
    level: str = "info"
    """``log_level``: stor's own log (stdout) leaves out events below it."""
    access_skip: tuple[str, ...] = DEFAULT_ACCESS_SKIP
    """``access_log_skip``: access events of paths starting with one of these are not
    logged anywhere (the balancer's health checks)."""


def parse_log_settings(raw: dict[str, object], problems: Problems) -> LogConfig:
    """``log`` (the outputs), ``log_level`` and ``access_log_skip`` of the config ``raw``."""
    found = parse_log(raw.get(KEY), problems)
    level = raw.get("log_level", "info")
    if level is None:
        level = "info"
    if level not in OWN_LEVELS:
        problems.error("log_level", f"must be one of {', '.join(OWN_LEVELS)}, got {describe(level)}")
        level = "info"
    skip = raw.get("access_log_skip", list(DEFAULT_ACCESS_SKIP))
    if skip is None:
        skip = list(DEFAULT_ACCESS_SKIP)
    if not isinstance(skip, list) or not all(isinstance(s, str) and s.startswith("/")
                                             for s in skip):
        problems.error("access_log_skip", "must be a list of path prefixes starting with /, "
                                          f"got {describe(skip)}")
        skip = list(DEFAULT_ACCESS_SKIP)
    return LogConfig(found.outputs, found.form, str(level), tuple(skip))


def level_number(value: object) -> int | None:
    """A Log::Dispatch level (name, alias or 0-7, as Log::Dispatch takes them) → 0-7, else None."""
    text = perl_string(value)
    if text is None:
        return None
    if len(text) == 1 and text in "01234567":
        return int(text)
    name = LEVEL_ALIASES.get(text, text)
    return LEVELS.index(name) if name in LEVELS else None


def parse_log(value: object, problems: Problems) -> LogConfig:
    """The ``log`` value → the outputs it names; errors and warnings go to ``problems``."""
    if value is None:
        return LogConfig()
    if isinstance(value, list):
        outputs = _dispatch_outputs(value, problems)
        return LogConfig(outputs, "log-dispatch" if value else "none")
    if isinstance(value, dict):
        return _stor_form(value, problems)
    problems.warn(KEY, f"{describe(value)} is neither a Log::Dispatch outputs list nor "
                       '{"gelf": …}: no log outputs')
    return LogConfig()


# -- the Log::Dispatch list ------------------------------------------------------

COMMON_PARAMS = frozenset({"name", "min_level", "max_level", "newline"})
CODE_PARAMS = frozenset({"callbacks", "send_sub", "short_message_sub"})
"""Perl code references: a JSON file cannot give one."""


def _dispatch_outputs(value: list[object], problems: Problems) -> tuple[Output, ...]:
    entries = _entries(value, problems)
    named: dict[str, Output] = {}
    for n, (key, cls, params) in enumerate(entries):
        output = _output(key, cls, params, problems)
        if output is None:
            continue
        name = perl_string(params.get("name")) or f"_anon_{n}"
        named.pop(name, None)  # Log::Dispatch keeps the last output of a name
        named[name] = output
    return tuple(named.values())


def _entries(value: list[object], problems: Problems) -> list[tuple[str, str, dict[str, object]]]:
    """(key, class name, params) of each output, from either Log::Dispatch form."""
    if len(value) > 1 and isinstance(value[1], dict):  # Log::Dispatch 2.23: [Class, {…}, …]
        found = []
        for i in range(0, len(value), 2):
            cls, params = value[i], value[i + 1] if i + 1 < len(value) else None
            key = f"{KEY}[{i + 1}]"
            if not isinstance(cls, str) or not isinstance(params, dict):
                problems.error(f"{KEY}[{i}]", "must be pairs of a class name and an object of "
                                              f"parameters, got {describe(cls)}, {describe(params)}")
                continue
            found.append((key, cls, params))
        return found
    found = []
    for i, entry in enumerate(value):
        key = f"{KEY}[{i}]"
        if not isinstance(entry, list) or not entry or not isinstance(entry[0], str):
            problems.error(key, f'must be a list ["Class", "key", value, …], got {describe(entry)}')
            continue
        if len(entry) % 2 == 0:
            problems.error(key, f"parameter {describe(entry[-1])} has no value")
            continue
        names, values = entry[1::2], entry[2::2]
        if not all(isinstance(k, str) for k in names):
            problems.error(key, f"parameter names must be strings, got {describe(names)}")
            continue
        found.append((key, entry[0], dict(zip(names, values))))
    return found


def _class(name: str) -> str:
    """A Log::Dispatch class argument → the output it loads (``+Full::Name`` is used as is)."""
    return name[len("+Log::Dispatch::"):] if name.startswith("+Log::Dispatch::") else name


def _output(key: str, cls: str, params: dict[str, object], problems: Problems) -> Output | None:
    builder = BUILDERS.get(_class(cls))
    if builder is None:
        problems.warn(key, f"output class {cls!r} is not one stor knows "
                           f"({', '.join(sorted(BUILDERS))}): ignored")
        return None
    build, known = builder
    for name in sorted(set(params) - known - COMMON_PARAMS):
        if name in CODE_PARAMS:
            problems.warn(f"{key}.{name}", "is Perl code, which a config file cannot give: ignored")
        else:
            hint = did_you_mean(name, known | COMMON_PARAMS)
            problems.warn(f"{key}.{name}", f"is not a parameter of {cls}: ignored{hint}")
    levels = _levels(key, params, problems)
    if levels is None:
        return None
    return build(key, levels, params, problems)


def _levels(key: str, params: dict[str, object], problems: Problems) -> tuple[int, int] | None:
    if "min_level" not in params:
        problems.error(f"{key}.min_level", f"is required (one of {', '.join(LEVELS)})")
        return None
    low = level_number(params["min_level"])
    high = level_number(params["max_level"]) if "max_level" in params else EMERGENCY
    for name, number in (("min_level", low), ("max_level", high)):
        if number is None:
            problems.error(f"{key}.{name}", f"must be one of {', '.join(LEVELS)} (or 0-7), "
                                            f"got {describe(params[name])}")
    if low is None or high is None:
        return None
    return low, high


def _string(params: dict[str, object], name: str, key: str, default: str | None,
            problems: Problems) -> str | None:
    value = params.get(name)
    if value is None:
        return default
    text = perl_string(value)
    if text is None or not text:
        problems.error(f"{key}.{name}", f"must be a non-empty string, got {describe(value)}")
        return default
    return text


# Gelf


def _gelf(key: str, levels: tuple[int, int], params: dict[str, object],
          problems: Problems) -> GelfOutput | None:
    socket = params.get("socket")
    if not isinstance(socket, dict):
        problems.error(f"{key}.socket", 'is required: {"host": …, "port": 12201, "protocol": '
                                        f'"udp"|"tcp"}}, got {describe(socket)}')
        return None
    skey = f"{key}.socket"
    problems.unknown_keys(skey, socket, ("host", "port", "protocol"), strict=False,
                          what="a socket parameter")
    host = socket.get("host")
    if not isinstance(host, str) or not host:
        problems.error(f"{skey}.host", f"must be a host name, got {describe(host)}")
        return None
    port = GELF_PORT if socket.get("port") is None else valid_port(socket["port"])
    if port is None:
        problems.error(f"{skey}.port", f"must be a port number, got {describe(socket['port'])}")
        return None
    try:
        host, port = split_host_port(host, port)
    except ValueError as e:
        problems.error(f"{skey}.host", str(e))
        return None
    protocol = socket.get("protocol") or "udp"
    if protocol not in ("udp", "tcp"):
        problems.error(f"{skey}.protocol", f'must be "udp" or "tcp", got {describe(protocol)}')
        return None
    fields = _fields(params.get("additional_fields"), f"{key}.additional_fields", problems)
    chunk = _chunk_size(params.get("chunked"), f"{key}.chunked", problems)
    if chunk and protocol == "tcp":
        problems.error(f"{key}.chunked", "applies to UDP only (Log::Dispatch::Gelf refuses it with tcp)")
        return None
    compress = "gzip" if perl_true(params.get("compress")) else "none"
    if compress != "none" and protocol == "tcp":
        problems.warn(f"{key}.compress", "ignored over TCP: Graylog's GELF TCP input takes "
                                         "uncompressed JSON")
        compress = "none"
    if fields is None or chunk is None:
        return None
    return GelfOutput(key=key, min_level=levels[0], max_level=levels[1], host=host, port=port,
                      protocol=str(protocol), additional_fields=fields,
                      source=_string(params, "host", key, None, problems),
                      compress=compress, chunk_size=chunk)


def _fields(value: object, key: str, problems: Problems) -> dict[str, object] | None:
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.error(key, f"must be an object of field names and values, got {describe(value)}")
        return None
    bad = [k for k in value if not k or not all(c.isalnum() or c in "_.-" for c in k) or k == "id"]
    if bad:
        problems.error(f"{key}.{bad[0]}", "is not a GELF field name (letters, digits, _ . -; not id)")
        return None
    return dict(value)


def _chunk_size(value: object, key: str, problems: Problems) -> int | None:
    """Log::GELF::Util's ``parse_size``: ``lan``, ``wan``, a whole number, 0 for none."""
    if value is None:
        return 0
    text = (perl_string(value) or "").lower()
    if text in ("lan", "wan"):
        return GELF_LAN_CHUNK if text == "lan" else GELF_WAN_CHUNK
    if text.isdigit():
        return int(text)
    problems.error(key, f'must be "lan", "wan", a number of bytes, or 0, got {describe(value)}')
    return None


# Screen


def _screen(key: str, levels: tuple[int, int], params: dict[str, object],
            problems: Problems) -> ScreenOutput:
    stderr = perl_true(params["stderr"]) if "stderr" in params else True
    return ScreenOutput(key=key, min_level=levels[0], max_level=levels[1], stderr=stderr)


# File


def _file(key: str, levels: tuple[int, int], params: dict[str, object],
          problems: Problems) -> FileOutput | None:
    filename = _string(params, "filename", key, None, problems)
    if filename is None:
        if params.get("filename") is None:
            problems.error(f"{key}.filename", "is required: the path of the log file")
        return None
    close_after_write = perl_true(params.get("close_after_write"))
    return FileOutput(key=key, min_level=levels[0], max_level=levels[1], filename=filename,
                      append=close_after_write or _append_mode(params.get("mode", ">")),
                      close_after_write=close_after_write,
                      lazy_open=perl_true(params.get("lazy_open")),
                      permissions=_permissions(params.get("permissions"), f"{key}.permissions",
                                               problems),
                      stamped=perl_true(params.get("stamp")))


def _append_mode(mode: object) -> bool:
    """Log::Dispatch::File: ``>>``, ``append`` or the number O_APPEND append; all else truncates.

    Its ``O_APPEND`` is its own stub returning 0 (it never imports Fcntl's), so
    the number that means append is 0.
    """
    text = perl_string(mode) or ""
    return text in (">>", "append") or (text.isdigit() and int(text) == 0)


def _permissions(value: object, key: str, problems: Problems) -> int | None:
    if value is None:
        return None
    number = perl_number(value)
    if number is None or not number.is_integer() or not 0 <= number <= 0o7777:
        problems.error(key, f"must be a mode as a decimal number (420 = 0644), got {describe(value)}")
        return None
    return int(number) or None  # Perl chmods only when it is true


# Syslog


def _syslog(key: str, levels: tuple[int, int], params: dict[str, object],
            problems: Problems) -> SyslogOutput | None:
    ident = perl_string(params.get("ident", "stor"))
    if ident is None:
        problems.error(f"{key}.ident", f"must be a string, got {describe(params.get('ident'))}")
        return None
    logopt = perl_string(params.get("logopt", "")) or ""
    facility_name = (perl_string(params.get("facility", "user")) or "").lower()
    facility_name = facility_name.removeprefix("log_")
    if facility_name not in SYSLOG_FACILITIES:
        problems.error(f"{key}.facility", f"must be one of {', '.join(SYSLOG_FACILITIES)}, "
                                          f"got {describe(params.get('facility'))}")
        return None
    socket = _syslog_socket(params.get("socket"), f"{key}.socket", problems)
    if socket is None:
        return None
    return SyslogOutput(key=key, min_level=levels[0], max_level=levels[1], ident=ident,
                        with_pid="pid" in logopt.replace(",", " ").split(),
                        facility=SYSLOG_FACILITIES[facility_name], socket=socket)


def _syslog_socket(value: object, key: str, problems: Problems) -> str | tuple[str, int] | None:
    """Sys::Syslog's ``setlogsock`` argument → a unix socket path or (host, UDP port)."""
    if isinstance(value, list):  # a list of mechanisms to try: stor takes the first it can use
        value = value[0] if value else None
    if value is None or value in ("native", "unix"):
        return DEV_LOG
    if value == "udp":
        return ("localhost", 514)
    if isinstance(value, dict):
        kind = value.get("type")
        if kind in ("native", "unix"):
            path = value.get("path", DEV_LOG)
            if isinstance(path, str) and path:
                return path
        elif kind == "udp":
            host = value.get("host", "localhost")
            port = valid_port(value.get("port", 514))
            if isinstance(host, str) and host and port is not None:
                return (host, port)
        problems.error(key, f"must be {{\"type\": \"unix\", \"path\": …}} or {{\"type\": \"udp\", "
                            f"\"host\": …, \"port\": …}}, got {describe(value)}")
        return None
    problems.warn(key, f"{describe(value)} is not supported by stor: using {DEV_LOG}")
    return DEV_LOG


def _null(key: str, levels: tuple[int, int], params: dict[str, object],
          problems: Problems) -> None:
    return None  # Log::Dispatch::Null takes every message and writes none


Builder = Callable[[str, tuple[int, int], dict[str, object], Problems], Output | None]
_FILE_PARAMS = frozenset({"filename", "mode", "binmode", "autoflush", "close_after_write",
                          "lazy_open", "permissions", "syswrite", "stamp"})
BUILDERS: dict[str, tuple[Builder, frozenset[str]]] = {
    "Gelf": (_gelf, frozenset({"socket", "additional_fields", "host", "compress", "chunked"})),
    "Screen": (_screen, frozenset({"stderr", "utf8"})),
    "File": (_file, _FILE_PARAMS),
    "File::Locked": (_file, _FILE_PARAMS),
    "Syslog": (_syslog, frozenset({"ident", "logopt", "facility", "socket", "lock"})),
    "Null": (_null, frozenset()),
}


# -- stor's own form ---------------------------------------------------------------

STOR_LOG_KEYS = frozenset({"gelf", "file"})
STOR_FILE_KEYS = frozenset({"path", "level", "stamp"})
STOR_GELF_KEYS = frozenset({"host", "level", "facility", "fields"})
STOR_LEVELS = {"debug": 0, "info": 1, "warn": 3, "error": 4, "critical": 5}


def _stor_form(value: dict[str, object], problems: Problems) -> LogConfig:
    """stor's ``{"gelf": …}``: stor alone defines it, so an unknown key is an error, not a warning
    (a misspelt ``"glef"`` must not switch GELF off without a word)."""
    problems.unknown_keys(KEY, value, STOR_LOG_KEYS, strict=True, what="a stor log setting")
    outputs: list[Output] = []
    if value.get("gelf") is not None:
        gelf = _stor_gelf(value["gelf"], problems)
        outputs += [gelf] if gelf is not None else []
    if value.get("file") is not None:
        file = _stor_file(value["file"], problems)
        outputs += [file] if file is not None else []
    return LogConfig(tuple(outputs), "stor" if outputs else "none")


def _stor_file(spec: object, problems: Problems) -> FileOutput | None:
    """``{"path": "/var/log/stor/stor.log", "level": "info", "stamp": true}``: lines appended,
    each with its time, pid and level unless ``stamp`` is false."""
    key = f"{KEY}.file"
    if not isinstance(spec, dict):
        problems.error(key, f'must be an object {{"path": "/var/log/…", …}}, got {describe(spec)}')
        return None
    problems.unknown_keys(key, spec, STOR_FILE_KEYS, strict=True, what="a file log setting")
    path = spec.get("path")
    if not isinstance(path, str) or not path:
        problems.error(f"{key}.path", "must be the path of the log file")
        return None
    level = spec.get("level", "info")
    if level not in STOR_LEVELS:
        problems.error(f"{key}.level", f"must be one of {', '.join(STOR_LEVELS)}, got {describe(level)}")
        return None
    stamp = spec.get("stamp", True)
    if not isinstance(stamp, bool):
        problems.error(f"{key}.stamp", f"must be true or false, got {describe(stamp)}")
        return None
    return FileOutput(key=key, min_level=STOR_LEVELS[str(level)], filename=path, append=True,
                      stamped=stamp)


def _stor_gelf(gelf: object, problems: Problems) -> GelfOutput | None:
    key = f"{KEY}.gelf"
    errors_before = len(problems.errors)
    if not isinstance(gelf, dict):
        problems.error(key, f'must be an object {{"host": "host[:port]", …}}, got {describe(gelf)}')
        return None
    problems.unknown_keys(key, gelf, STOR_GELF_KEYS, strict=True, what="a GELF setting")
    host_text = gelf.get("host")
    if not isinstance(host_text, str) or not host_text:
        problems.error(f"{key}.host", 'must be a string "host" or "host:port"')
        return None
    try:
        host, port = split_host_port(host_text, GELF_PORT)
    except ValueError as e:
        problems.error(f"{key}.host", str(e))
        return None
    level = gelf.get("level", "info")
    if level not in STOR_LEVELS:
        problems.error(f"{key}.level", f"must be one of {', '.join(STOR_LEVELS)}, got {describe(level)}")
    facility = gelf.get("facility", "stor")
    if not isinstance(facility, str) or not facility:
        problems.error(f"{key}.facility", "must be a non-empty string")
    fields = gelf.get("fields", {})
    if not isinstance(fields, dict) or not all(
            isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in fields.values()):
        problems.error(f"{key}.fields", "must be an object of string or number values")
        fields = {}
    if len(problems.errors) > errors_before:
        return None
    return GelfOutput(key=key, min_level=STOR_LEVELS[str(level)], host=host, port=port,
                      additional_fields={"facility": facility, **fields}, compress="zlib",
                      chunk_size=STOR_GELF_CHUNK, full_message=False)

"""The ``log`` section: the old service's Log::Dispatch outputs list, and stor's ``{"gelf": …}``.

No reactor: what each form means as typed outputs, what is a warning, and what
is an error naming its key.
"""

from typing import Any

import pytest

from stor.config import parse_config
from stor.config.log import (
    DEV_LOG, GELF_LAN_CHUNK, GELF_WAN_CHUNK, FileOutput, GelfOutput, LogConfig, ScreenOutput,
    SyslogOutput, level_number, parse_log,
)
from stor.config.problems import Problems
from stor.core.errors import ConfigError

GRAYLOG = {"host": "graylog", "port": 12201, "protocol": "udp"}


def parsed(value: object) -> tuple[LogConfig, Problems]:
    problems = Problems()
    return parse_log(value, problems), problems


def only(value: object) -> Any:
    """The one output ``value`` names, with no errors and no warnings."""
    config, problems = parsed(value)
    assert not problems.errors and not problems.warnings, problems
    assert len(config.outputs) == 1
    return config.outputs[0]


def test_the_spec_example_names_three_outputs() -> None:
    config, problems = parsed([
        ["Gelf", "min_level", "info", "socket", GRAYLOG, "additional_fields", {"facility": "stor"}],
        ["Screen", "min_level", "warning"],
        ["File", "min_level", "info", "filename", "/var/log/stor.log"],
    ])
    assert not problems.errors and not problems.warnings
    assert config.form == "log-dispatch"
    assert config.outputs == (
        GelfOutput(key="log[0]", min_level=1, host="graylog", port=12201, protocol="udp",
                   additional_fields={"facility": "stor"}),
        ScreenOutput(key="log[1]", min_level=3, stderr=True),
        FileOutput(key="log[2]", min_level=1, filename="/var/log/stor.log", append=False),
    )


@pytest.mark.parametrize("value", [None, []])
def test_null_and_the_old_tests_empty_list_name_no_outputs(value: object) -> None:
    config, problems = parsed(value)
    assert config == LogConfig() and not problems.errors and not problems.warnings
    raw = {"storage_pairs": [["/x/a", "/x/b"]]}
    assert parse_config(raw).log == LogConfig()
    assert parse_config({**raw, "log": value}).log == LogConfig()


def test_the_pairs_form_of_log_dispatch_2_23_is_read_too() -> None:
    config, problems = parsed(["Screen", {"min_level": "debug", "stderr": 0},
                               "File", {"min_level": "error", "filename": "x.log", "mode": ">>"}])
    assert not problems.errors
    assert config.outputs == (ScreenOutput(key="log[1]", min_level=0, stderr=False),
                              FileOutput(key="log[3]", min_level=4, filename="x.log", append=True))


@pytest.mark.parametrize("value, number", [
    ("debug", 0), ("info", 1), ("notice", 2), ("warning", 3), ("warn", 3), ("error", 4),
    ("err", 4), ("critical", 5), ("crit", 5), ("alert", 6), ("emergency", 7), ("emerg", 7),
    (0, 0), ("7", 7), (3, 3), ("INFO", None), ("8", None), ("verbose", None), (None, None),
])
def test_levels_are_log_dispatchs(value: object, number: int | None) -> None:
    assert level_number(value) == number


def test_min_and_max_level_bound_what_an_output_takes() -> None:
    output = only([["Screen", "min_level", "notice", "max_level", "error"]])
    assert (output.min_level, output.max_level) == (2, 4)
    assert [output.accepts(n) for n in range(8)] == [False, False, True, True, True,
                                                     False, False, False]


def test_class_names_are_taken_as_log_dispatch_takes_them() -> None:
    assert isinstance(only([["+Log::Dispatch::File", "min_level", 0, "filename", "f"]]), FileOutput)
    assert isinstance(only([["File::Locked", "min_level", 0, "filename", "f"]]), FileOutput)
    config, problems = parsed([["Null", "min_level", "debug"]])
    assert config.outputs == () and not problems.warnings  # Null writes nothing, as before


@pytest.mark.parametrize("cls", ["Email::MailSend", "gelf", "+My::Output", "ApacheLog"])
def test_an_output_class_stor_does_not_know_is_one_warning_naming_it(cls: str) -> None:
    config, problems = parsed([["Screen", "min_level", "info"], [cls, "min_level", "info"]])
    assert [o.key for o in config.outputs] == ["log[0]"]
    assert not problems.errors
    assert [w.key for w in problems.warnings] == ["log[1]"]
    assert repr(cls) in problems.warnings[0].message


def test_unknown_and_code_parameters_of_a_known_class_are_warnings() -> None:
    config, problems = parsed([["Screen", "min_level", "info", "colour", "red",
                                "callbacks", "sub {}"]])
    assert len(config.outputs) == 1 and not problems.errors
    assert sorted(w.key for w in problems.warnings) == ["log[0].callbacks", "log[0].colour"]


def test_an_output_of_the_same_name_replaces_the_earlier_one() -> None:
    config, _ = parsed([["Screen", "min_level", "info", "name", "out"],
                        ["File", "min_level", "info", "name", "out", "filename", "f"],
                        ["Screen", "min_level", "debug"]])
    assert [type(o).__name__ for o in config.outputs] == ["FileOutput", "ScreenOutput"]


# Gelf

def test_gelf_defaults_are_log_dispatch_gelfs() -> None:
    output = only([["Gelf", "min_level", "debug", "socket", {"host": "graylog"}]])
    assert output == GelfOutput(key="log[0]", min_level=0, host="graylog", port=12201,
                                protocol="udp", compress="none", chunk_size=0, full_message=True)


def test_gelf_parameters_keep_their_meanings() -> None:
    output = only([["Gelf", "min_level", "info", "socket", {"host": "g", "port": "5140"},
                    "host", "web-1", "compress", 1, "chunked", "WAN",
                    "additional_fields", {"facility": "stor", "env": "prod"}]])
    assert (output.port, output.source, output.compress, output.chunk_size) == (
        5140, "web-1", "gzip", GELF_WAN_CHUNK)
    assert output.additional_fields == {"facility": "stor", "env": "prod"}
    assert only([["Gelf", "min_level", 1, "socket", GRAYLOG, "chunked", "lan"]]).chunk_size == GELF_LAN_CHUNK
    assert only([["Gelf", "min_level", 1, "socket", GRAYLOG, "chunked", 1400]]).chunk_size == 1400
    tcp = only([["Gelf", "min_level", 1, "socket", {"host": "g", "protocol": "tcp"}]])
    assert tcp.protocol == "tcp"


def test_gzip_over_tcp_is_dropped_with_a_warning() -> None:
    config, problems = parsed([["Gelf", "min_level", 1, "compress", 1,
                                "socket", {"host": "g", "protocol": "tcp"}]])
    assert config.outputs[0].compress == "none"  # type: ignore[attr-defined]
    assert [w.key for w in problems.warnings] == ["log[0].compress"]


@pytest.mark.parametrize("entry, key", [
    (["Gelf", "min_level", "info"], "log[0].socket"),
    (["Gelf", "min_level", "info", "socket", {}], "log[0].socket.host"),
    (["Gelf", "min_level", "info", "socket", {"host": "g", "port": "x"}], "log[0].socket.port"),
    (["Gelf", "min_level", "info", "socket", {"host": "g", "port": 0}], "log[0].socket.port"),
    (["Gelf", "min_level", "info", "socket", {"host": "g", "protocol": "http"}],
     "log[0].socket.protocol"),
    (["Gelf", "min_level", "info", "socket", {"host": "g", "protocol": "tcp"}, "chunked", "lan"],
     "log[0].chunked"),
    (["Gelf", "min_level", "info", "socket", GRAYLOG, "chunked", "big"], "log[0].chunked"),
    (["Gelf", "min_level", "info", "socket", GRAYLOG, "additional_fields", ["a"]],
     "log[0].additional_fields"),
    (["Gelf", "min_level", "info", "socket", GRAYLOG, "additional_fields", {"a b": 1}],
     "log[0].additional_fields.a b"),
    (["Gelf", "socket", GRAYLOG], "log[0].min_level"),
    (["Screen", "min_level", "loud"], "log[0].min_level"),
    (["Screen", "min_level", "info", "max_level", "top"], "log[0].max_level"),
    (["File", "min_level", "info"], "log[0].filename"),
    (["File", "min_level", "info", "filename", ""], "log[0].filename"),
    (["File", "min_level", "info", "filename", "f", "permissions", "rw"], "log[0].permissions"),
    (["Syslog", "min_level", "info", "facility", "kernel"], "log[0].facility"),
    (["Syslog", "min_level", "info", "socket", {"type": "udp", "port": "x"}], "log[0].socket"),
    (["Screen", "min_level"], "log[0]"),
    ([5, "min_level", "info"], "log[0]"),
    ("Screen", "log[0]"),
])
def test_a_bad_output_is_an_error_naming_its_key(entry: Any, key: str) -> None:
    config, problems = parsed([entry])
    assert problems.errors and problems.errors[0].key == key, problems
    with pytest.raises(ConfigError) as e:
        parse_config({"storage_pairs": [["/x/a", "/x/b"]], "log": [entry]})
    assert str(e.value).startswith(key + ":")


# Screen, File, Syslog

@pytest.mark.parametrize("stderr, expected", [(None, True), (1, True), ("1", True), (0, False),
                                              ("0", False), ("", False), (False, False)])
def test_screen_writes_to_stderr_unless_perl_finds_stderr_false(stderr: Any, expected: bool) -> None:
    entry: list[Any] = ["Screen", "min_level", "info"]
    if stderr is not None:
        entry += ["stderr", stderr]
    assert only([entry]).stderr is expected


@pytest.mark.parametrize("mode, append", [
    (None, False), (">", False), ("write", False), (">>", True), ("append", True), (0, True),
    (1024, False),
])
def test_file_mode_appends_or_empties_as_log_dispatch_file(mode: Any, append: bool) -> None:
    entry: list[Any] = ["File", "min_level", "info", "filename", "/var/log/stor.log"]
    if mode is not None:
        entry += ["mode", mode]
    assert only([entry]).append is append


def test_file_options() -> None:
    output = only([["File", "min_level", "info", "filename", "f", "close_after_write", 1,
                    "lazy_open", "1", "permissions", 420, "autoflush", 0, "binmode", ":utf8"]])
    assert (output.append, output.close_after_write, output.lazy_open, output.permissions) == (
        True, True, True, 0o644)


def test_syslog_defaults_and_options() -> None:
    assert only([["Syslog", "min_level", "info"]]) == SyslogOutput(
        key="log[0]", min_level=1, ident="stor", with_pid=False, facility=1, socket=DEV_LOG)
    output = only([["Syslog", "min_level", "info", "ident", "stor-a", "logopt", "ndelay,pid",
                    "facility", "local3", "socket", {"type": "unix", "path": "/run/log"}]])
    assert (output.ident, output.with_pid, output.facility, output.socket) == (
        "stor-a", True, 19, "/run/log")
    udp = only([["Syslog", "min_level", "info", "socket", {"type": "udp", "host": "loghost"}]])
    assert udp.socket == ("loghost", 514)


def test_a_syslog_socket_stor_cannot_use_is_a_warning() -> None:
    config, problems = parsed([["Syslog", "min_level", "info", "socket", "tcp"]])
    assert config.outputs[0].socket == DEV_LOG  # type: ignore[attr-defined]
    assert [w.key for w in problems.warnings] == ["log[0].socket"]


# stor's own form

def test_stor_gelf_form_keeps_working() -> None:
    config, problems = parsed({"gelf": {"host": "graylog:5140", "level": "warn",
                                        "fields": {"env": "test"}}})
    assert not problems.errors and not problems.warnings
    assert config.form == "stor"
    assert config.outputs == (GelfOutput(
        key="log.gelf", min_level=3, host="graylog", port=5140,
        additional_fields={"facility": "stor", "env": "test"}, compress="zlib",
        chunk_size=8192 - 12, full_message=False),)


def test_stor_gelf_defaults() -> None:
    output = only({"gelf": {"host": "graylog"}})
    assert (output.host, output.port, output.min_level) == ("graylog", 12201, 1)
    assert output.additional_fields == {"facility": "stor"}


@pytest.mark.parametrize("gelf, key", [
    ({"host": ""}, "log.gelf.host"),
    ({"host": "graylog:99999"}, "log.gelf.host"),
    ({"host": "graylog", "level": "loud"}, "log.gelf.level"),
    ({"host": "graylog", "fields": {"env": ["a"]}}, "log.gelf.fields"),
    ({"host": "graylog", "hots": 1}, "log.gelf.hots"),
    ("graylog:12201", "log.gelf"),
])
def test_a_bad_stor_gelf_entry_is_an_error_naming_the_key(gelf: Any, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config({"storage_pairs": [["/x/a", "/x/b"]], "log": {"gelf": gelf}})
    assert str(e.value).startswith(key)


@pytest.mark.parametrize("value, key", [
    ("/var/log/stor.log", "log"), (True, "log"),
])
def test_other_log_values_name_no_outputs_with_a_warning(value: object, key: str) -> None:
    config, problems = parsed(value)
    assert config.outputs == () and not problems.errors
    assert [w.key for w in problems.warnings] == [key]


def test_log_warnings_travel_with_the_config() -> None:
    config = parse_config({"storage_pairs": [["/x/a", "/x/b"]], "basic_auth": "w:p",
                           "log": [["Email::MailSend", "min_level", "error"]]})
    assert config.log.outputs == ()
    assert [w.key for w in config.warnings] == ["log[0]"]


@pytest.mark.parametrize("value, key, hint", [
    ({"glef": {"host": "graylog"}}, "log.glef", "gelf"),
    ({"Gelf": {"host": "graylog"}}, "log.Gelf", "gelf"),
    ({"level": "debug"}, "log.level", None),
])
def test_an_unknown_key_of_stors_log_form_is_an_error(value: object, key: str,
                                                       hint: str | None) -> None:
    # stor alone defines {"gelf": …}: a misspelt key must not switch GELF off without a word
    config, problems = parsed(value)
    assert [e.key for e in problems.errors] == [key]
    assert problems.errors[0].message.endswith(f'(did you mean "{hint}"?)' if hint else "(known: file, gelf)")


def test_an_unknown_log_dispatch_parameter_names_the_nearest_one() -> None:
    _, problems = parsed([["File", "min_level", "info", "filename", "/tmp/x.log", "mdoe", ">>"]])
    assert [w.key for w in problems.warnings] == ["log[0].mdoe"]
    assert problems.warnings[0].message.endswith('(did you mean "mode"?)')

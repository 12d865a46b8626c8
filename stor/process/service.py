"""Assembling the daemon: ``twistd stor`` options and the service tree.

``makeService`` loads and validates the config (an error is one line on
stderr and exit status 2, before anything listens) and returns either

- a :class:`~stor.shutdown.Frontend` over the daemon of :func:`build_daemon`
  (the HTTP site, a timer that sweeps stale temp files, the integrations the
  config names): one serving process that tells systemd when it is ready and
  stops gracefully; or, with ``--workers N``,
- a :class:`~stor.workers.Supervisor` that binds the socket and runs N such
  processes over it (each started with ``--adopt-fd``).

under a :class:`~stor.observe.log_outputs.LogOutputs` service for the outputs the
config's ``log`` names (started first, stopped last, so the start-up and
shutdown messages reach them).
"""

import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from twisted.application import internet, service
from twisted.internet import endpoints
from twisted.logger import Logger
from twisted.python import usage

from stor import __version__
from stor.core.reactor import Reactor, the_reactor
from stor.observe import logs
from stor.core import layout
from stor.core.metrics import Tee
from stor.disk.locks import ShaLocks, Tombstones, default_lock_dir
from stor.disk.temps import sweep_temp_dir
from stor.http.app import StorApp
from stor.http.site import Closing, StorSite
from stor.config import Config, load_config
from stor.config.problems import EXIT_CONFIG, NO_CONFIG_FILE, report_lines
from stor.config.server import listen_problem
from stor.core.errors import ConfigError
from stor.cache.lookup import build_cache
from stor.observe.statsd import build_metrics
from stor.amqp.publish import AmqpPublisher, build_publisher
from stor.s3.read import NoS3, build_s3, s3_client
from stor.s3.put import S3Writer
from stor.disk.corrupt import CorruptReplicas
from stor.disk.batch import SmallBatcher
from stor.disk.diskpool import DiskPool
from stor.disk.groupsync import GROUP_SYNC
from stor.disk.health import Prober, ProbeService
from stor.disk.local import LocalStore
from stor.disk.readfaults import ReadFaults
from stor.disk.repair import Repairer
from stor.s3.outbox import Outbox, build_outbox
from stor.s3.peers import build_peers
from stor.store.store import Store
from stor.observe.access import emit_access
from stor.observe.log_outputs import build_log_outputs
from stor.observe.policy import own_log_policy
from stor.observe.logs import LOG_FORMATS
from stor.observe.prometheus import (MULTIPROC_ENV, AmqpState, Exporter, Registries,
                                     StatsdMirror, SyncService, multiprocess)
from stor.process.worker_metrics import SLOT_ENV, register_worker_processes
from stor.process.shutdown import Frontend, adopt
from stor.process.title import set_title
from stor.process.workers import Supervisor, stop_with_parent

log = Logger()
T = TypeVar("T")

TOMBSTONE_AGE = 24 * 3600.0
"""Seconds a DELETE's tombstone is kept: longer than any upload or fill can take."""


class Options(usage.Options):
    """``twistd stor --config FILE [--listen ENDPOINT] [--log-format F] [--workers N]``."""

    synopsis = "[--config FILE] [--listen ENDPOINT] [--log-format text|json] [--workers N]"
    optParameters = [
        ["config", "c", None, "Config file (JSON); defaults to $CONFIG_FILE."],
        ["listen", "l", None, "Twisted endpoint to listen on; overrides the config's 'listen'."],
        ["log-format", None, "text", "Log lines as 'text' (twistd's) or 'json' (one object a line)."],
        ["workers", "w", 1, "Serving processes sharing the listening socket.", int],
        ["adopt-fd", None, None, "(internal, set by --workers) serve on this inherited socket.", int],
    ]
    longdesc = (f"stor {__version__}: store and serve files addressed by their SHA-256.\n"
                "Exit status: 0 after a graceful stop (SIGTERM, SIGINT, SIGHUP); 1 when it "
                "cannot listen or its workers keep dying; 2 for a config or usage error "
                "(one line per problem, before anything listens).")

    def opt_version(self) -> None:
        """Print stor's version (``twistd --version`` prints Twisted's) and exit."""
        sys.stdout.write(f"stor {__version__}\n")
        raise SystemExit(0)

    def postOptions(self) -> None:
        # No config file is not a usage error: makeService says so in one line
        # and exits 2, as for any other config problem (twistd would print the
        # whole usage and exit 1).
        if not self["config"]:
            self["config"] = os.environ.get("CONFIG_FILE") or None
        if self["log-format"] not in LOG_FORMATS:
            raise usage.UsageError(f"--log-format must be one of {', '.join(LOG_FORMATS)}")
        if self["workers"] < 1:
            raise usage.UsageError("--workers must be at least 1")
        parent = getattr(self, "parent", None)
        if parent is not None and not parent.get("logger") and not parent.get("syslog"):
            # twistd builds its observer from --logger before makeService runs
            parent["logger"] = logs.use_format(self["log-format"], parent.get("logfile"),
                                               bool(parent.get("nodaemon")))

    def worker_argv(self, fd: int) -> list[str]:
        """The twistd command line of one ``--workers`` child serving inherited socket ``fd``."""
        parent = getattr(self, "parent", None)
        argv = ["-n", "--pidfile="]
        logfile = parent.get("logfile") if parent is not None else None
        if logfile:
            argv += ["--logfile", logfile]
        return argv + ["stor", "--config", os.path.abspath(self["config"]),
                       "--log-format", self["log-format"], "--adopt-fd", str(fd)]


def config_or_exit(path: str | None) -> Config:
    """Load the config, or print one line per error (``stor: config error: <key>: <message>``)
    and exit 2.  Its warnings are logged later, once, by the log outputs' service."""
    if not path:
        sys.stderr.write(f"stor: {NO_CONFIG_FILE}\n")
        raise SystemExit(EXIT_CONFIG)
    return _exit_on_config_error(lambda: load_config(path))


def temp_sweeper(store: LocalStore, tombstones: Tombstones,
                 period: float) -> internet.TimerService:
    """Removes stale temp files (and old DELETE tombstones) at start and every
    ``cleanup_tempdir_period`` seconds."""

    def sweep_all() -> int:
        tombstones.sweep(TOMBSTONE_AGE)
        return sum(sweep_temp_dir(s) for s in store.storages)

    def sweep() -> object:
        d = store.run(sweep_all)
        def report(count: int) -> None:
            if count:
                log.info("removed {count} stale temp files", count=count)

        d.addCallback(report)
        d.addErrback(lambda f: log.failure("temp sweep failed", failure=f))
        return d

    return internet.TimerService(period, sweep)


@dataclass
class Daemon:
    """Everything one stor process serves with, built from a config.

    ``services`` holds the parts with a lifetime (threads, sockets, timers);
    start it before serving and stop it after.  Tests build the same thing.
    """

    site: StorSite
    store: Store
    services: service.MultiService


def build_daemon(config: Config, reactor: Reactor, run_as: "tuple[int, int] | None" = None) -> Daemon:
    """The web site for ``config``, its collaborators, and their services.

    Built in layer order, each part from parts already built (nothing is bound
    late): the tiers, the store over them, the routes over the store, the site
    serving the routes.  ``run_as``: the (uid, gid) twistd's ``--uid``/``--gid``
    will switch to after this runs as root (the lock directory is made for and
    checked against them).  Services stop in the reverse order they were added:
    the disk pool last.
    """
    started = time.monotonic()
    services = service.MultiService()
    statsd, statsd_service = build_metrics(config, reactor)
    if statsd_service is not None:
        statsd_service.setServiceParent(services)
    pool = DiskPool(reactor)
    pool.setServiceParent(services)
    # /status, readiness and metrics get threads of their own: uploads waiting for a
    # SHA's lock or a slow disk never hold them up (docs/security.rst)
    health_pool = DiskPool(reactor, size=2, name="stor-health")
    health_pool.setServiceParent(services)
    registries = Registries.create()
    if multiprocess():  # a --workers child: process_* of every worker, not only its own
        register_worker_processes(registries.page, os.environ[MULTIPROC_ENV])
    storage_of = {layout.server_name(s): s for s in config.storages}.get
    events = StatsdMirror(registries.own, storage_of)
    metrics = Tee(statsd, events)
    regex = config.writable_pairs_regex
    prober = Prober(config.storages, lambda storage: bool(regex.search(storage)))
    local = LocalStore(config.storage_pairs, pool, writable_regex=regex,
                       balance_threshold=config.balance_threshold,
                       check_mounts=config.check_mounts, health=prober.check,
                       health_pool=health_pool, set_aside=prober.set_aside,
                       hedge_after=config.read_hedge_after,
                       read_faults=ReadFaults(metrics))
    ProbeService(prober, health_pool.run, config.probe_period).setServiceParent(services)
    locks = ShaLocks(config.lock_dir or default_lock_dir(), owner=run_as)
    locks.prepare()  # a lock directory that cannot be trusted stops start-up (ConfigError)
    cache = build_cache(config, reactor)
    cache.setServiceParent(services)
    publisher = build_publisher(config.amqp, reactor, statsd)
    if isinstance(publisher, service.Service):
        publisher.setServiceParent(services)
    repairer = Repairer(local, locks, metrics)
    corrupt = CorruptReplicas(local, locks, metrics, repairer, cache.drop)
    outbox = build_outbox(config, reactor, pool.run, metrics, on_corrupt=corrupt.found_at)
    exporter = Exporter(local.health_blocking, local.writable, health_pool.run,
                        registries=registries, events=events,
                        cache_stats=lambda: cache.stats, amqp_state=_amqp_state(publisher),
                        outbox_state=None if outbox is None else outbox.state,
                        storage_of=storage_of,
                        memcached_servers=[s.name for s in config.memcached.servers])
    SyncService(exporter, reactor).setServiceParent(services)
    s3 = build_s3(config, reactor, metrics)
    batcher = SmallBatcher(reactor, local, locks, GROUP_SYNC)
    batcher.setServiceParent(services)
    store = Store(local, locks, metrics=metrics, cache=cache,
                  s3=None if isinstance(s3, NoS3) else s3,
                  s3_first=config.s3 is None or config.s3.read != "fallback",
                  publisher=publisher, repairer=repairer, corrupt=corrupt,
                  max_upload_size=config.max_upload_size, outbox=outbox,
                  s3_objects=_s3_objects(config, reactor, pool.run),
                  fill_local=config.s3 is not None and config.s3.fill_local,
                  peers=list(build_peers(config, reactor, metrics)), clock=reactor,
                  batcher=batcher)
    if outbox is not None:
        outbox.setServiceParent(services)
    closing = Closing()
    app = StorApp(store, metrics=metrics, metrics_page=exporter.page,
                  basic_auth=config.basic_auth, delete_auth=config.delete_auth, stopping=closing,
                  status_extra=lambda: _status_extra(started, outbox),
                  sendfile=config.sendfile, write_headroom=config.write_headroom)
    site = StorSite(app, access=emit_access, closing=closing, observer=exporter, metrics=metrics,
                    header_timeout=config.header_timeout, body_timeout=config.body_timeout,
                    server_header=config.server_header.encode("ascii"),
                    trusted_proxies=config.trusted_proxies)
    site.displayTracebacks = False
    site.noisy = False  # no "Starting factory <StorSite object at 0x…>" lines
    temp_sweeper(local, store.tombstones, config.cleanup_tempdir_period).setServiceParent(services)
    StartupCheck(local).setServiceParent(services)
    return Daemon(site, store, services)


def _s3_objects(config: Config, reactor: Reactor, run: Any) -> "S3Writer | None":
    """What DELETE uses in the bucket, whenever S3 is configured at all."""
    if config.s3 is None:
        return None
    return S3Writer(config.s3, s3_client(config.s3, reactor), reactor, run)


class StartupCheck(service.Service):
    """Says at start, one line each, which storages cannot serve or take files."""

    def __init__(self, local: LocalStore) -> None:
        self._local = local

    def startService(self) -> None:
        super().startService()
        d = self._local.health()
        d.addCallback(self._report)
        d.addErrback(lambda f: log.failure("storage check at start failed", failure=f))

    def _report(self, health: list[Any]) -> None:
        for h in health:
            if h.problem is not None and not h.placeable:
                log.warn("storage {storage} {problem}: it gets no new files",
                         storage=h.path, problem=h.problem)
            elif h.problem is not None:
                log.warn("storage {storage} {problem}; /status reports it (check_mounts is not "
                         "set: files still go to it, as with the old service)",
                         storage=h.path, problem=h.problem)


def _status_extra(started: float, outbox: Outbox | None) -> dict[str, Any]:
    """What ``stor info`` shows beside the storages: version, uptime, the S3 backlog."""
    extra: dict[str, Any] = {"version": __version__,
                             "uptime_seconds": round(time.monotonic() - started, 1)}
    if outbox is not None:
        extra["s3_outbox"] = outbox.state()
    return extra


def _run_as(options: Options) -> "tuple[int, int] | None":
    """The (uid, gid) twistd switches to after ``makeService`` (``--uid``/``--gid``), if any."""
    parent = getattr(options, "parent", None)
    uid = parent.get("uid") if parent is not None else None
    if uid is None or os.geteuid() != 0:
        return None
    assert parent is not None  # uid came from it
    gid = parent.get("gid")
    if gid is None:
        import pwd

        gid = pwd.getpwuid(uid).pw_gid
    return int(uid), int(gid)


def _amqp_state(publisher: object) -> "Callable[[], AmqpState] | None":
    if not isinstance(publisher, AmqpPublisher):
        return None
    return lambda: AmqpState(publisher.connected, publisher.buffered, publisher.dropped)


def _exit_on_config_error(build: Callable[[], T]) -> T:
    """``build()``, or one ``stor: config error: <key>: <message>`` line per error and exit status 2."""
    try:
        return build()
    except ConfigError as e:
        sys.stderr.writelines(line + "\n" for line in report_lines(e.problems))
        raise SystemExit(EXIT_CONFIG) from None


def server_endpoint(reactor: Reactor, listen: str, key: str = "listen") -> Any:
    """The Twisted server endpoint ``listen`` describes (parsed, not listened on)."""
    problem = listen_problem(listen)  # the checks load_config made of the config's listen
    if problem is not None:
        raise ConfigError(key, problem)
    return endpoints.serverFromString(reactor, listen)


SWITCH_INTERVAL = 0.0005
"""Seconds a serving process's thread may wait for the GIL before it asks the holder to
let go (Python's default: 0.005).  A small upload's batch thread makes some sixty
system calls, each a release of the GIL; while the reactor runs Python (parsing the
next request) each return had to wait for it, up to 5 ms: measured with 8 clients,
+4 to +9 % small uploads a second; 1 client and the large transfers unchanged
(docs/benchmarks.rst)."""


def makeService(options: Options) -> service.MultiService:
    """The whole daemon, for twistd: one serving process, or a parent of ``--workers``."""
    reactor = the_reactor()

    config = config_or_exit(options["config"])
    listen = options["listen"] or config.listen
    key = "--listen" if options["listen"] else "listen"
    endpoint = _exit_on_config_error(lambda: server_endpoint(reactor, listen, key))
    child = options["adopt-fd"] is not None
    set_title(f"worker {os.environ.get(SLOT_ENV, '?')}" if child else "main",
              os.path.abspath(options["config"]))
    reopened: list[Callable[[], object]] = []

    top: service.MultiService
    if options["workers"] > 1 and not child:
        top = service.MultiService()
        supervisor = Supervisor(endpoint, options["workers"], options.worker_argv, reactor,
                                grace=config.shutdown_grace_period)
        supervisor.setServiceParent(top)
        reopened.append(lambda: supervisor.signal_workers(signal.SIGUSR1))
    else:
        if child:  # a --workers child
            os.setpgid(0, 0)  # a terminal's ^C goes to the parent, which passes it on once
            stop_with_parent()
            serve = adopt(reactor, options["adopt-fd"])
        else:
            serve = endpoint.listen
        sys.setswitchinterval(SWITCH_INTERVAL)
        daemon = _exit_on_config_error(lambda: build_daemon(config, reactor, _run_as(options)))
        top = Frontend(serve, daemon.site, daemon.services, reactor,
                       grace=config.shutdown_grace_period)
    logs.use_policy(own_log_policy(config.log.level, config.log.access_skip))
    outputs = _exit_on_config_error(lambda: build_log_outputs(
        config.log, reactor, warnings=config.warnings, child=child, on_reopen=reopened))
    root = service.MultiService()
    outputs.setServiceParent(root)  # first: starts before and stops after everything else
    top.setServiceParent(root)
    return root

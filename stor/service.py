"""Assembling the daemon: ``twistd stor`` options and the service tree.

``makeService`` builds a ``MultiService``: the HTTP endpoint, a timer that
sweeps stale temp files, and whatever integrations the config names.  The
config is loaded and validated here, before anything listens; an error is one
line on stderr and exit status 2.
"""

import os
import sys
from dataclasses import dataclass
from typing import Any

from twisted.application import internet, service
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import endpoints
from twisted.logger import Logger
from twisted.python import usage

from stor import __version__
from stor.app import StorApp
from stor.config import Config, load_config
from stor.errors import ConfigError
from stor.cache import build_cache
from stor.metrics import build_metrics
from stor.publisher import build_publisher
from stor.repair import Repairer
from stor.s3 import build_s3
from stor.request import StorSite
from stor.diskpool import DiskPool
from stor.storage import LocalStore

log = Logger()

EXIT_CONFIG = 2


class Options(usage.Options):
    """``twistd stor --config FILE [--listen ENDPOINT]``."""

    synopsis = "[--config FILE] [--listen ENDPOINT]"
    optParameters = [
        ["config", "c", None, "Config file (JSON); defaults to $CONFIG_FILE."],
        ["listen", "l", None, "Twisted endpoint to listen on; overrides the config's 'listen'."],
    ]
    longdesc = f"stor {__version__}: store and serve files addressed by their SHA-256."

    def postOptions(self) -> None:
        if not self["config"]:
            self["config"] = os.environ.get("CONFIG_FILE")
        if not self["config"]:
            raise usage.UsageError("no config file: give --config FILE or set CONFIG_FILE")


def config_or_exit(path: str) -> Config:
    """Load the config, or print one line naming the problem and exit."""
    try:
        return load_config(path)
    except ConfigError as e:
        sys.stderr.write(f"stor: config error: {e}\n")
        raise SystemExit(EXIT_CONFIG) from None


def temp_sweeper(store: LocalStore, period: float) -> internet.TimerService:
    """Removes stale temp files at start and every ``cleanup_tempdir_period`` seconds."""

    def sweep() -> object:
        d = store.sweep(period)
        d.addCallback(lambda n: n and log.info("removed {count} stale temp files", count=n))
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
    app: StorApp
    store: LocalStore
    services: service.MultiService


def build_daemon(config: Config, reactor: Any) -> Daemon:
    """The web site for ``config``, its collaborators, and their services."""
    services = service.MultiService()
    metrics, metrics_service = build_metrics(config, reactor)
    if metrics_service is not None:
        metrics_service.setServiceParent(services)
    pool = DiskPool(reactor)
    pool.setServiceParent(services)
    store = LocalStore(
        config.storage_pairs,
        pool,
        writable_regex=config.writable_pairs_regex,
        balance_threshold=config.balance_threshold,
        check_mounts=config.check_mounts,
    )
    cache = build_cache(config, reactor)
    cache.setServiceParent(services)
    publisher = build_publisher(config, reactor, metrics)
    if isinstance(publisher, service.Service):
        publisher.setServiceParent(services)
    s3 = build_s3(config, reactor, metrics)
    repairer = Repairer(store, metrics, config.writable_pairs_regex)
    app = StorApp(config, store, metrics=metrics, cache=cache, s3=s3, publisher=publisher,
                  repairer=repairer)
    site = StorSite(app.resource(), uploads=app)
    site.displayTracebacks = False
    temp_sweeper(store, config.cleanup_tempdir_period).setServiceParent(services)
    return Daemon(site, app, store, services)


def makeService(options: Options) -> service.MultiService:
    """The whole daemon, for twistd."""
    from twisted.internet import reactor

    config = config_or_exit(options["config"])
    if config.unknown_keys:
        log.warn("config: ignoring unknown keys {keys}", keys=", ".join(config.unknown_keys))
    listen = options["listen"] or config.listen
    try:
        endpoint = endpoints.serverFromString(reactor, listen)
    except (ValueError, KeyError, TypeError, IndexError) as e:
        sys.stderr.write(f"stor: config error: --listen: {listen!r} is not a valid endpoint: {e}\n")
        raise SystemExit(EXIT_CONFIG) from None
    try:
        daemon = build_daemon(config, reactor)
    except ConfigError as e:  # a value only an integration can judge (e.g. the AMQP URI)
        sys.stderr.write(f"stor: config error: {e}\n")
        raise SystemExit(EXIT_CONFIG) from None
    top = daemon.services
    StreamServerEndpointService(endpoint, daemon.site).setServiceParent(top)
    return top

"""stor in this process: storages in tmp_path, a config, a site on a loopback port.

No process is started: the daemon is built with ``build_daemon`` on the test's
reactor and listens on port 0 (the port it got is read back from the listening
port), so these fixtures belong to the fast tier.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import endpoints, reactor
from twisted.internet.defer import maybeDeferred

from stor.config import Config, parse_config
from stor.process.service import build_daemon


@pytest.fixture
def storage_dirs(tmp_path: Path) -> list[list[str]]:
    """Two pairs of empty storage directories."""
    pairs = []
    for p in range(2):
        pair = []
        for m in range(2):
            d = tmp_path / f"data{2 * p + m + 1}"
            d.mkdir()
            pair.append(str(d))
        pairs.append(pair)
    return pairs


@pytest.fixture
def config_dict(storage_dirs: list[list[str]], tmp_path: Path) -> dict[str, Any]:
    """A minimal valid config, as JSON would hold it; tests adjust it before starting."""
    return {
        "storage_pairs": storage_dirs,
        "basic_auth": "writer:writer_pass",
        "check_mounts": False,
        "listen": "tcp:0:interface=127.0.0.1",
        "lock_dir": str(tmp_path / "locks"),
    }


@dataclass
class Server:
    """A running stor site."""

    url: str
    config: Config
    port: Any

    def at(self, path: str) -> str:
        return f"{self.url}/{path.lstrip('/')}"


@pytest_twisted.async_yield_fixture
async def start_server():
    """Start stor on a free loopback port with a given config dict; all stopped after."""
    started = []

    async def start(config_dict: dict[str, Any]) -> Server:
        config = parse_config(json.loads(json.dumps(config_dict)))
        daemon = build_daemon(config, reactor)
        daemon.services.startService()
        endpoint = endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1")
        port = await endpoint.listen(daemon.site)
        started.append((port, daemon))
        return Server(f"http://127.0.0.1:{port.getHost().port}", config, port)

    yield start
    for port, daemon in started:
        await port.stopListening()
        await maybeDeferred(daemon.services.stopService)


@pytest_twisted.async_fixture
async def server(start_server, config_dict) -> Server:
    """stor with the default test config."""
    return await start_server(config_dict)

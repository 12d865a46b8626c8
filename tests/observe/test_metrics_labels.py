"""Per-storage metrics name a storage one way, and gauges exist only where they mean
something (issue 21, item 12)."""

import os

import pytest
import pytest_twisted
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from stor.core.layout import server_name
from stor.observe.prometheus import StatsdMirror
from test_ops_metrics import scrape


def test_a_storage_error_is_labelled_with_the_storage_path_as_every_other_gauge() -> None:
    """statsite's key carries ``mnt-uxdata2``; Prometheus labels it ``/mnt/uxdata2``."""
    storages = ["/mnt/uxdata2", "/srv/stor/disk 1"]
    registry = CollectorRegistry()
    mirror = StatsdMirror(registry, {server_name(s): s for s in storages}.get)
    for storage in storages:
        mirror.incr(f"error.storage.{server_name(storage)}.count")
    mirror.incr(f"error.storage.{server_name(storages[0])}.count")
    text = generate_latest(registry).decode()
    counts = {s.labels["storage"]: s.value for f in text_string_to_metric_families(text)
              for s in f.samples if s.name == "stor_storage_errors_total"}
    assert counts == {"/mnt/uxdata2": 2, "/srv/stor/disk 1": 1}


@pytest_twisted.ensureDeferred
async def test_storage_size_is_a_gauge_beside_free_bytes(server, storage_dirs) -> None:
    m = await scrape(server)
    for storage in (s for pair in storage_dirs for s in pair):
        st = os.statvfs(storage)
        label = (("storage", storage),)
        assert m["stor_storage_size_bytes"][label] == st.f_blocks * st.f_frsize
        assert m["stor_storage_free_bytes"][label] <= m["stor_storage_size_bytes"][label]


@pytest_twisted.ensureDeferred
async def test_a_host_without_amqp_or_memcached_has_no_gauges_for_them(server) -> None:
    """An alert on ``stor_amqp_connected == 0`` must not fire on a host that has no AMQP."""
    m = await scrape(server)
    assert not [name for name in m if name.startswith(("stor_amqp_", "stor_memcached_up"))]


@pytest.mark.acceptance('memcached')
@pytest_twisted.ensureDeferred
async def test_memcached_up_follows_the_server(start_server, config_dict, memcached) -> None:
    name = f"127.0.0.1:{memcached.port}"
    config_dict["memcached_servers"] = [name]
    server = await start_server(config_dict)
    await treq_get(server, "ab" * 32)  # a lookup: the cache connects
    assert (await scrape(server))["stor_memcached_up"] == {(("server", name),): 1}
    memcached.kill()
    for _ in range(100):  # until a lookup has found it gone (the gauge syncs every second)
        await treq_get(server, "cd" * 32)
        if (await scrape(server))["stor_memcached_up"] == {(("server", name),): 0}:
            break
    else:
        raise AssertionError("stor_memcached_up stayed 1 with memcached killed")


async def treq_get(server, sha: str) -> None:
    import treq

    response = await treq.get(server.at(sha))
    await response.content()

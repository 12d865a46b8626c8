"""``GET /metrics``: what Prometheus scrapes, parsed with prometheus-client's parser."""

import os
import socket

import pytest_twisted
import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock

from support.helpers import AUTH, sha256
from stor.observe.prometheus import SyncService


async def scrape(server) -> dict[str, dict[tuple, float]]:
    """``{sample name: {sorted label items: value}}`` of one scrape."""
    response = await treq.get(server.at("/metrics"))
    assert response.code == 200
    assert response.headers.getRawHeaders("content-type")[0].startswith("text/plain; version=")
    text = (await response.content()).decode()
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once this socket is closed


@pytest_twisted.ensureDeferred
async def test_metrics_count_requests_bytes_latency_storage_and_cache(server, storage_dirs):
    data = os.urandom(70_000)
    sha = sha256(data)
    assert (await treq.post(server.at(sha), data=data, auth=AUTH)).code == 201
    for _ in range(3):
        response = await treq.get(server.at(sha))
        assert response.code == 200 and await response.content() == data
    assert (await treq.get(server.at("ab" * 32))).code == 404
    assert (await treq.head(server.at(sha))).code == 200

    m = await scrape(server)
    requests = m["stor_http_requests_total"]
    assert requests[(("method", "POST"), ("status", "201"))] == 1
    assert requests[(("method", "GET"), ("status", "200"))] == 3
    assert requests[(("method", "GET"), ("status", "404"))] == 1
    assert requests[(("method", "HEAD"), ("status", "200"))] == 1
    assert m["stor_http_response_bytes_total"][(("method", "GET"),)] >= 3 * len(data)
    assert m["stor_http_request_bytes_total"][(("method", "POST"),)] == len(data)
    latency = m["stor_http_request_duration_seconds_count"]
    assert latency[(("method", "GET"),)] == 4
    buckets = m["stor_http_request_duration_seconds_bucket"]
    assert buckets[(("le", "+Inf"), ("method", "GET"))] == 4
    assert m["stor_http_requests_in_flight"][()] == 1  # this scrape

    free = m["stor_storage_free_bytes"]
    for storage in (s for pair in storage_dirs for s in pair):
        st = os.statvfs(storage)
        assert abs(free[(("storage", storage),)] - st.f_bavail * st.f_frsize) < 1 << 30
        assert m["stor_storage_writable"][(("storage", storage),)] == 1

    hits = m["stor_cache_hits_total"]
    assert hits[(("layer", "lru"),)] >= 2  # the second and third GET
    assert m["stor_cache_misses_total"][()] >= 1
    assert m["stor_build_info"]
    assert "process_resident_memory_bytes" in m


@pytest_twisted.ensureDeferred
async def test_metrics_show_the_amqp_publisher_disconnected_and_buffering(start_server,
                                                                          config_dict):
    config_dict["rabbitmq_uri"] = f"amqp://guest:guest@127.0.0.1:{closed_port()}/%2F"
    server = await start_server(config_dict)
    for i in range(5):
        assert (await treq.get(server.at(f"{i:02d}" * 32))).code == 404
    m = await scrape(server)
    assert m["stor_amqp_connected"][()] == 0
    assert m["stor_amqp_buffered_messages"][()] == 5
    assert m["stor_amqp_dropped_messages_total"][()] == 0


# -- the periodic sync, on a task.Clock ---------------------------------------------------


class CountingExporter:
    """Stands in for the Exporter: only counts the syncs the service asks for."""

    def __init__(self) -> None:
        self.syncs = 0

    def sync(self) -> None:
        self.syncs += 1


def test_sync_runs_at_start_then_every_period_and_never_after_stop() -> None:
    clock, exporter = Clock(), CountingExporter()
    service = SyncService(exporter, clock, period=1.0)  # type: ignore[arg-type]  # a stand-in
    service.startService()
    assert exporter.syncs == 1  # at once: a scrape right after start sees this worker
    clock.advance(0.999)
    assert exporter.syncs == 1
    clock.advance(0.001)
    assert exporter.syncs == 2
    clock.pump([1.0] * 3)
    assert exporter.syncs == 5
    service.stopService()
    clock.pump([1.0] * 10)
    assert exporter.syncs == 5 and clock.getDelayedCalls() == []

"""``stor_s3_outbox_oldest_age_seconds``: how long the oldest file waiting for S3
has waited (docs/fleet-operations.rst has the alert).  S3 here is moto behind a
relay the test cuts and restores."""

import os

import pytest
import pytest_twisted
import treq
from prometheus_client.parser import text_string_to_metric_families

from support.fleet import eventually_async, host_config, in_bucket, s3_keys, s3_relay
from support.helpers import AUTH, sha256

pytestmark = pytest.mark.acceptance('moto')

AGE = "stor_s3_outbox_oldest_age_seconds"


async def gauges(url: str) -> dict[str, float]:
    r = await treq.get(f"{url}/metrics")
    text = (await r.content()).decode()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name in (AGE, "stor_s3_outbox_depth")}


@pytest_twisted.ensureDeferred
async def test_the_oldest_pending_upload_ages_while_s3_is_away_and_is_0_once_drained(
        start_server, tmp_path, moto, bucket):
    relay = await s3_relay(moto)
    await relay.cut()  # S3 refuses connections
    try:
        server = await start_server(host_config(tmp_path, "a", s3_write_through=True,
                                                **s3_keys(moto, bucket, relay.endpoint)))
        assert (await gauges(server.url))[AGE] == 0.0
        data = os.urandom(10_000)
        r = await treq.post(f"{server.url}/{sha256(data)}", data=data, auth=AUTH)
        assert r.code == 201
        first = (await gauges(server.url))[AGE]

        async def older() -> bool:
            return (await gauges(server.url))[AGE] > first + 0.2

        await eventually_async(older, "the oldest pending upload growing older")
        assert (await gauges(server.url))["stor_s3_outbox_depth"] == 1.0
        await relay.restore()
        assert await in_bucket(moto, bucket, sha256(data)) == sha256(data)

        async def drained() -> bool:
            return (await gauges(server.url)) == {AGE: 0.0, "stor_s3_outbox_depth": 0.0}

        await eventually_async(drained, "an empty outbox")
    finally:
        await relay.cut()

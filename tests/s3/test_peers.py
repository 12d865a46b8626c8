"""``fleet_peers``: a miss asks the fleet's other hosts (their disks only) before a
404 (docs/fleet-operations.rst).  Real stor sites on loopback."""

import os

import pytest
import pytest_twisted
import treq

from support.fleet import host_config
from support.helpers import AUTH, sha256
from support.ports import refused_port
from test_s3_unknown import stor_with_s3_at


async def post(server, data: bytes) -> None:
    assert (await treq.post(server.at(sha256(data)), data=data, auth=AUTH)).code == 201


@pytest_twisted.ensureDeferred
async def test_a_file_on_a_peer_is_served_and_a_peer_is_asked_for_its_disks_only(
        start_server, tmp_path, statsite):
    holder = await start_server(host_config(tmp_path, "holder"))
    asker = await start_server(host_config(
        tmp_path, "asker", fleet_peers=[f"http://127.0.0.1:{refused_port()}", holder.url],
        statsite={"host": f"127.0.0.1:{statsite.port}", "prefix": "s"}))
    data = os.urandom(200_000)
    await post(holder, data)
    r = await treq.get(asker.at(sha256(data)))
    assert r.code == 200 and await r.content() == data
    r = await treq.head(asker.at(sha256(data)))
    assert r.code == 200 and r.headers.getRawHeaders(b"content-length") == [b"200000"]
    await statsite.wait_for(r"s\.success\.get\.ok_peer\.count:1\|c")

    only_asker = b"stored on the asker only"
    await post(asker, only_asker)
    r = await treq.get(holder.at(sha256(only_asker)), headers={"Stor-Peer": "local"})
    assert r.code == 404  # a peer's request is answered from its own disks
    r = await treq.get(asker.at(sha256(b"nowhere")))
    assert r.code == 404  # nobody has it; a peer that refused is no reason for a 503
    await statsite.wait_for(r"s\.error\.get\.not_found_old\.count:1\|c")


@pytest.mark.acceptance('moto')
@pytest_twisted.ensureDeferred
async def test_s3_down_and_peers_without_the_file_is_still_503(
        start_server, config_dict, statsite, moto, tmp_path):
    peer = await start_server(host_config(tmp_path, "peer"))
    server = await stor_with_s3_at(start_server, config_dict, statsite, moto,
                                   f"127.0.0.1:{refused_port()}", fleet_peers=[peer.url])
    data = b"only on the peer"
    await post(peer, data)
    r = await treq.get(server.at(sha256(data)))
    assert r.code == 200 and await r.content() == data
    r = await treq.get(server.at(sha256(b"nowhere at all")))
    assert r.code == 503

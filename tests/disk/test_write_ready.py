"""Write readiness (docs/SPEC.md §9): ``GET /health/write`` fails while no writable
pair has more than ``write_headroom`` bytes free on both members, while reads go
on (``/health/ready`` stays 200) and an upload that does not fit still gets 507.

The disk that fills up is a real 1 MiB tmpfs."""

import os

import pytest
import pytest_twisted
import treq

from support.helpers import AUTH, sha256
from test_health import get

KiB = 1024


async def stor_on_tiny_pair(start_server, config_dict, tiny_disk, headroom: int):
    """One pair, both members directories on the same 1 MiB tmpfs."""
    members = [tiny_disk / "a", tiny_disk / "b"]
    for m in members:
        m.mkdir()
    config_dict["storage_pairs"] = [[str(m) for m in members]]
    config_dict["write_headroom"] = headroom
    return await start_server(config_dict)


@pytest.mark.acceptance('fault')
@pytest_twisted.ensureDeferred
async def test_a_filling_host_leaves_the_write_path_before_it_refuses(
        start_server, config_dict, tiny_disk):
    server = await stor_on_tiny_pair(start_server, config_dict, tiny_disk, headroom=450 * KiB)
    assert (await get(server, "/health/write"))[::2] == (200, b"OK\n")

    data = os.urandom(300 * KiB)  # twice on the same tmpfs: 600 KiB of 1 MiB used
    assert (await treq.post(server.at(sha256(data)), data=data, auth=AUTH)).code == 201

    code, _, body = await get(server, "/health/write")
    assert code == 503
    lines = body.decode().splitlines()
    assert len(lines) == 2 and all("not more than write_headroom (460800)" in line
                                   for line in lines)
    assert (await get(server, "/health/ready"))[0] == 200  # reads go on
    r = await treq.get(server.at(sha256(data)))
    assert r.code == 200 and await r.content() == data
    small = os.urandom(10 * KiB)  # still fits: a host below its headroom takes what fits
    assert (await treq.post(server.at(sha256(small)), data=small, auth=AUTH)).code == 201
    big = os.urandom(300 * KiB)  # does not fit: the old answer
    assert (await treq.post(server.at(sha256(big)), data=big, auth=AUTH)).code == 507


@pytest.mark.acceptance('fault')
@pytest_twisted.ensureDeferred
async def test_write_ready_again_once_space_is_freed(start_server, config_dict, tiny_disk):
    server = await stor_on_tiny_pair(start_server, config_dict, tiny_disk, headroom=400 * KiB)
    filler = tiny_disk / "a" / "filler"
    filler.write_bytes(os.urandom(700 * KiB))
    assert (await get(server, "/health/write"))[0] == 503
    filler.unlink()
    assert (await get(server, "/health/write"))[::2] == (200, b"OK\n")


@pytest_twisted.ensureDeferred
async def test_a_pair_that_takes_no_files_does_not_make_the_host_write_ready(
        start_server, config_dict, storage_dirs):
    config_dict["writable_pairs_regex"] = "nothing-matches-this"
    server = await start_server(config_dict)
    code, _, body = await get(server, "/health/write")
    assert (code, body) == (503, b"no pair is writable (writable_pairs_regex)\n")
    assert (await get(server, "/health/ready"))[0] == 503


@pytest.mark.acceptance('fault')
@pytest_twisted.ensureDeferred
async def test_one_roomy_writable_pair_is_enough(start_server, config_dict, storage_dirs,
                                                 tiny_disk):
    """A full pair beside a roomy one: write-ready (uploads go to the roomy one)."""
    members = [tiny_disk / "a", tiny_disk / "b"]
    for m in members:
        m.mkdir()
    config_dict["storage_pairs"] = [[str(m) for m in members], storage_dirs[1]]
    config_dict["write_headroom"] = 2 * 1024 * KiB  # more than the tmpfs has at all
    server = await start_server(config_dict)
    assert (await get(server, "/health/write"))[::2] == (200, b"OK\n")

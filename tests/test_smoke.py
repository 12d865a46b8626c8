import treq
import pytest_twisted
from conftest import AUTH, sha256

@pytest_twisted.ensureDeferred
async def test_roundtrip(server):
    data = b"x" * 100000
    r = await treq.post(server.at(sha256(data)), data=data, auth=AUTH)
    assert r.code == 201, await r.text()
    r = await treq.get(server.at(sha256(data)))
    assert await r.content() == data

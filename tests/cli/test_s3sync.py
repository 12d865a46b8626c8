"""``stor s3-sync`` as an operator runs it: the real command in a child process,
against moto (signatures checked; objects read back and hashed)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from support.s3 import MotoS3
from support.s3write import MiB, make_file, place_big, stored_sha
from support.rgw import moto_then_rgw

pytestmark = pytest.mark.acceptance('moto', 'process')


@pytest.fixture(params=["moto", "rgw"])
def moto(request, moto):
    """These tests hold on moto's server and on a real S3, Ceph RGW (tests/support/rgw.py)."""
    return moto_then_rgw(request, moto)


def run_sync(config: Path, *args: str, env: dict[str, str] | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stor.cli.main", "s3-sync", "--config", str(config), *args],
        capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture
def sync_config(tmp_path: Path, storage_dirs: list[list[str]], moto: MotoS3,
                bucket: str) -> tuple[Path, dict[str, Any]]:
    raw = {
        "storage_pairs": storage_dirs,
        "check_mounts": False,
        "s3_write_through": True,
        "s3_bucket": bucket,
        "s3_credentials": {"access_key": moto.access_key, "secret_key": moto.secret_key,
                           "host": moto.endpoint},
    }
    path = tmp_path / "stor.json"
    path.write_text(json.dumps(raw))
    return path, raw


def store(pair: list[str], data: bytes) -> str:
    for storage in pair:
        sha, _ = make_file(storage, data)
    return sha


def test_sync_pushes_what_is_missing_and_a_second_run_nothing(sync_config, storage_dirs,
                                                              moto, bucket):
    config, _ = sync_config
    shas = [store(storage_dirs[i % 2], f"file {i}".encode() * 1000) for i in range(6)]
    moto.put(bucket, f"{shas[0][:2]}/{shas[0][2:4]}/{shas[0][4:6]}/{shas[0]}",
             b"file 0" * 1000)
    for storage in storage_dirs[0]:  # a big one, in parts
        big, _ = place_big(storage, 70 * MiB, seed=9)
    os.makedirs(os.path.join(storage_dirs[1][0], ".stor-tmp"))
    open(os.path.join(storage_dirs[1][0], ".stor-tmp", "junk.dat"), "w").close()

    first = run_sync(config)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "7 files seen, 1 already in S3, 6 pushed" in first.stdout
    assert "every file is in S3" in first.stdout
    assert [stored_sha(moto, bucket, sha) for sha in shas + [big]] == shas + [big]

    second = run_sync(config)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "7 files seen, 7 already in S3, 0 pushed" in second.stdout


def test_dry_run_lists_the_missing_and_pushes_nothing(sync_config, storage_dirs, moto, bucket):
    config, _ = sync_config
    sha = store(storage_dirs[0], b"not yet in the bucket")
    result = run_sync(config, "--dry-run")
    assert result.returncode == 1
    assert f"missing  {sha}" in result.stdout
    assert "dry run: 1 missing from S3, nothing pushed" in result.stdout
    assert stored_sha(moto, bucket, sha) is None


def test_a_corrupt_replica_is_skipped_for_its_twin(sync_config, storage_dirs, moto, bucket):
    config, _ = sync_config
    data = b"twin bytes" * 1000
    sha = store(storage_dirs[0], data)
    rotten = make_file(storage_dirs[0][0], b"rot" + data[3:], sha=sha)[1]
    result = run_sync(config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"corrupt  {rotten}" in result.stdout
    assert stored_sha(moto, bucket, sha) == sha


def test_a_file_with_no_good_replica_fails_the_run(sync_config, storage_dirs, moto, bucket):
    config, _ = sync_config
    data = b"lost" * 1000
    sha = store(storage_dirs[0], data)
    for storage in storage_dirs[0]:
        make_file(storage, b"rot" + data[3:], sha=sha)
    result = run_sync(config)
    assert result.returncode == 1
    assert f"failed   {sha}" in result.stdout
    assert "1 failed" in result.stdout
    assert stored_sha(moto, bucket, sha) is None


def test_only_the_named_storage_is_walked(sync_config, storage_dirs, moto, bucket):
    config, _ = sync_config
    here = store(storage_dirs[0], b"on pair one")
    there = store(storage_dirs[1], b"on pair two")
    result = run_sync(config, storage_dirs[1][1])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 files seen" in result.stdout
    assert stored_sha(moto, bucket, there) == there
    assert stored_sha(moto, bucket, here) is None


def test_max_mbps_paces_the_reads(sync_config, storage_dirs, moto, bucket):
    config, _ = sync_config
    sha = store(storage_dirs[0], os.urandom(3 * MiB))
    result = run_sync(config, "--max-mbps", "4")
    assert result.returncode == 0, result.stdout + result.stderr
    seconds = float(re.search(r"failed, in ([\d.]+) s\n", result.stdout).group(1))
    assert seconds >= 0.6  # 3.1 MB at 4 MB/s (the bucket starts empty)
    assert stored_sha(moto, bucket, sha) == sha


def test_s3_down_fails_the_run(sync_config, storage_dirs, tmp_path):
    config, raw = sync_config
    from support.ports import refused_port

    raw["s3_credentials"]["host"] = f"127.0.0.1:{refused_port()}"
    raw["s3_connect_timeout"] = 1
    config.write_text(json.dumps(raw))
    store(storage_dirs[0], b"stays local")
    result = run_sync(config)
    assert result.returncode == 1
    assert "cannot connect" in result.stdout


@pytest.mark.parametrize("change, message", [
    ({"s3_write_through": False}, "needs s3_credentials"),
    ({"s3_credentials": None}, "s3_credentials: must be an object"),
    ({"s3_region": "Not A Region"}, "s3_region"),
])
def test_config_errors_exit_2(sync_config, change, message):
    config, raw = sync_config
    raw.update(change)
    raw = {k: v for k, v in raw.items() if v is not None}
    config.write_text(json.dumps(raw))
    result = run_sync(config)
    assert result.returncode == 2
    assert message in result.stderr


def test_an_unknown_storage_is_a_usage_error(sync_config, tmp_path):
    config, _ = sync_config
    result = run_sync(config, str(tmp_path / "elsewhere"))
    assert result.returncode == 2
    assert "is not a storage in the config" in result.stderr


def test_no_config_is_a_usage_error():
    env = {k: v for k, v in os.environ.items() if k != "CONFIG_FILE"}
    result = subprocess.run([sys.executable, "-m", "stor.cli.main", "s3-sync"],
                            capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2
    assert "no config file" in result.stderr

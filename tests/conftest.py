"""The fixtures every tier's tests share, all from the support package (tests/support/).

- ``support.tiers``: the fast and acceptance tiers (the ``acceptance`` marker and its checks);
- ``support.profiles``: Hypothesis profiles (``fast`` for ``make test-fast``);
- ``support.site``: stor in this process on a loopback port (``server``, ``start_server``);
- ``support.harness``: stor as real ``twistd`` processes (``stor_process``);
- peers: ``support.memcached``, ``support.s3`` (moto), ``support.s3write``,
  ``support.logs`` (statsite, GELF and log readers), ``support.fleet`` (hosts, nginx, HAProxy);
- ``support.faults``: real faults (read-only and tiny tmpfs mounts);
- ``support.faultfs``: disk faults through a FUSE passthrough (``faultfs``).
"""

pytest_plugins = [
    "support.tiers",
    "support.profiles",
    "support.site",
    "support.faults",
    "support.faultfs",
    "support.harness",
    "support.memcached",
    "support.s3",
    "support.s3write",
    "support.logs",
    "support.fleet",
    "support.rgw",
    "pytester",  # test_tiers.py runs a small suite of its own
]

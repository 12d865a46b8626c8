"""What the tests share: one harness for stor processes, one set of helpers, the
peers (memcached, moto, RabbitMQ, nginx, HAProxy, log readers) and the tiers.

Fixtures are registered with pytest by ``tests/conftest.py`` (``pytest_plugins``);
helpers are imported from the modules here (``from support.helpers import sha256``).
"""

# stor in a container, a drop-in for the old image:
#
#   docker build -t stor .
#   docker run -d --name stor -p 8080:8080 --stop-timeout 45 \
#       -v /etc/stor/stor.json:/etc/stor.conf:ro \
#       -v /mnt/data1:/mnt/data1 -v /mnt/data2:/mnt/data2 \
#       -v /mnt/data3:/mnt/data3 -v /mnt/data4:/mnt/data4 \
#       stor [--workers 4] [--log-format json]
#
# The config is read from $CONFIG_FILE (/etc/stor.conf, as the old image did);
# its "listen" must be reachable from outside the container (tcp:8080, not
# interface=127.0.0.1) and its storage paths are paths inside the container.
#
# stor runs as the image's unprivileged user stor (uid/gid 10001), never as
# root (docs/security.rst): a process serving strangers gets no more rights
# than its storages need.  Volumes must belong to that user; storages the old
# image wrote (as root) are handed over once, before the first start:
#
#   chown -R 10001:10001 /mnt/data1 /mnt/data2 /mnt/data3 /mnt/data4
#   docker run ... --user 10001:10001 ... stor      (the default; --user is optional)
#
# A config installed 0640 root:stor on the host is read through the host's
# group stor, whose gid is not 10001: add it to the container,
#
#   docker run ... --group-add "$(getent group stor | cut -d: -f3)" ... stor
#
# Its SHA locks live in /run/stor (the image's, owned by stor, mode 0750).
# Running as root (--user 0:0) still works, as the old image did, and is
# not recommended.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/stor
COPY pyproject.toml README.rst requirements.txt ./
COPY stor ./stor
COPY twisted ./twisted

# Install the dependencies at the versions and hashes pinned in requirements.txt
# (pip refuses any other file), then stor itself alone (--no-deps: nothing
# unpinned), check the set is whole, and build twistd's plugin cache at build
# time: a --user run cannot write site-packages, and twistd would otherwise warn
# at every start.
RUN pip install --require-hashes --no-deps -r requirements.txt \
 && pip install --no-deps . \
 && pip check \
 && python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))" \
 && groupadd --system --gid 10001 stor \
 && useradd --system --uid 10001 --gid stor --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin stor \
 && mkdir -p /mnt/data1 /mnt/data2 /mnt/data3 /mnt/data4 /run/stor \
 && chown stor:stor /mnt/data1 /mnt/data2 /mnt/data3 /mnt/data4 /run/stor \
 && chmod 0750 /run/stor

# MALLOC_ARENA_MAX: two malloc arenas, so the pool threads' freed buffers are
# reused rather than kept per thread (systemd/stor.service says the same).
ENV CONFIG_FILE=/etc/stor.conf \
    STOR_STATUS_URL=http://127.0.0.1:8080/health/live \
    MALLOC_ARENA_MAX=2
# No VOLUME: a run that forgets its -v would write into anonymous volumes, which
# are mounted filesystems and pass check_mounts; without VOLUME the storages are
# on the container's own filesystem and a config with "check_mounts": true refuses
# them (docs/operations.rst, "In a container").
EXPOSE 8080

WORKDIR /tmp
USER stor:stor

# /health/live is 200 while stor serves, whatever its disks say: restarting a
# container does not bring a disk back (/status, 503 for one missing disk, is for
# monitoring; /health/ready for a load balancer).  STOR_STATUS_URL overrides it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; urllib.request.urlopen(os.environ['STOR_STATUS_URL'], timeout=4); sys.exit(0)"]

# SIGTERM (docker stop) lets requests in flight finish, then stor exits 0;
# give it longer than shutdown_grace_period (--stop-timeout / stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["twistd", "--nodaemon", "--pidfile=", "stor"]
CMD []

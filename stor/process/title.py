"""What ``ps`` and ``top`` show for stor's processes.

Without this a ``--workers`` child shows as ``python3.11 -c from
twisted.scripts.twistd import run; run() …`` and the parent as a long twistd
command line: an operator cannot tell the parent from a worker, nor which
config a process serves.  ``setproctitle`` (the library made for this, used by
gunicorn and uWSGI) rewrites the command line ``ps`` reads, and the
15-character thread name ``top`` shows.
"""

import setproctitle


def title(role: str, config: str | None) -> str:
    """``stor main: /etc/stor/stor.json`` or ``stor worker 2: /etc/stor/stor.json``."""
    return f"stor {role}: {config}" if config else f"stor {role}"


def set_title(role: str, config: str | None) -> None:
    """Name this process for ``ps``: the role (``main``, ``worker N``) and its config."""
    setproctitle.setproctitle(title(role, config))

"""Issue 19, acceptance 2: the unit stays hardened, and makes the lock directory itself."""

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from stor.core.errors import ConfigError
from stor.disk.locks import ShaLocks, default_lock_dir

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "stor.service"
DROP_IN = UNIT.parent / "stor.service.d" / "storages.conf"


def _settings() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_the_unit_makes_the_lock_directory_for_stor_only() -> None:
    s = _settings()
    assert s["User"] == ["stor"] and s["Group"] == ["stor"]
    directories = s["RuntimeDirectory"][-1].split()
    assert "stor/locks" in directories  # $RUNTIME_DIRECTORY/locks: stor.disk.locks' default
    mode = int(s["RuntimeDirectoryMode"][-1], 8)
    assert mode & 0o007 == 0, "the lock directory must not be open to other users"
    assert mode & 0o070 == 0o070, "operators in the group stor share the locks"


def test_the_directory_the_unit_makes_is_the_one_stor_takes(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """What systemd does with the unit's settings, done by hand: each RuntimeDirectory=
    entry made with RuntimeDirectoryMode= for User=/Group= (here: this test's user), and
    $RUNTIME_DIRECTORY set to all of them, colon-separated.  stor's default lock_dir is the
    unit's stor/locks, trusted as it is; the same directory open to others is refused."""
    s = _settings()
    mode = int(s["RuntimeDirectoryMode"][-1], 8)
    made = []
    for entry in s["RuntimeDirectory"][-1].split():
        d = tmp_path / "run" / entry
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(mode)
        made.append(str(d))
    monkeypatch.setenv("RUNTIME_DIRECTORY", ":".join(made))
    lock_dir = default_lock_dir()
    assert lock_dir == str(tmp_path / "run" / "stor" / "locks")
    locks = ShaLocks(lock_dir)
    locks.prepare()
    with locks.hold("abc" + "0" * 61):
        pass
    st = os.stat(lock_dir)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (os.geteuid(), mode)  # left as systemd made it
    os.chmod(lock_dir, mode | 0o007)
    with pytest.raises(ConfigError, match="writable by every user"):
        ShaLocks(lock_dir).prepare()


@pytest.mark.acceptance('process')
@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_analyze_security_rates_the_unit_ok_or_better(tmp_path: Path) -> None:
    """As installed: the unit and its storages drop-in beside it (systemd-analyze reads
    ``stor.service.d/``: a loosening drop-in raises the exposure, checked too)."""
    unit = tmp_path / "stor.service"
    shutil.copy(UNIT, unit)
    (tmp_path / "stor.service.d").mkdir()
    shutil.copy(DROP_IN, tmp_path / "stor.service.d" / "storages.conf")

    def exposure() -> tuple[float, str]:
        done = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)
        m = re.search(r"Overall exposure level for stor.service: ([\d.]+) (\w+)", done.stdout)
        assert m, done.stdout + done.stderr
        return float(m.group(1)), m.group(2)

    level, word = exposure()
    assert word in ("OK", "SAFE") and level <= 2.0, (level, word)
    (tmp_path / "stor.service.d" / "zz-loose.conf").write_text("[Service]\nProtectSystem=no\n")
    assert exposure()[0] > level, "the drop-ins were not read"

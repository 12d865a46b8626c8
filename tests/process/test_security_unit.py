"""Issue 19, acceptance 2: the unit stays hardened, and makes the lock directory itself."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "stor.service"


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


@pytest.mark.acceptance('process')
@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_analyze_security_rates_the_unit_ok_or_better(tmp_path: Path) -> None:
    unit = tmp_path / "stor.service"
    shutil.copy(UNIT, unit)
    done = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    m = re.search(r"Overall exposure level for stor.service: ([\d.]+) (\w+)", done.stdout)
    assert m, done.stdout + done.stderr
    assert m.group(2) in ("OK", "SAFE"), m.group(0)
    assert float(m.group(1)) <= 2.0, m.group(0)

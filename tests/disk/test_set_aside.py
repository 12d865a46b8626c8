"""A storage an upload failed on leaves placement until a probe passes (issue 18, case 12):
the rules of :meth:`stor.disk.health.Prober.set_aside`, with probes given by the test."""

from pathlib import Path

from stor.disk.health import Prober


def _prober(storages: list[str], outcome: dict[str, str | None], during=None) -> Prober:
    def probe(storage: str) -> str | None:
        if during is not None:
            during(storage)
        return outcome.get(storage)
    return Prober(storages, lambda s: True, (probe, probe))


def test_set_aside_fails_the_storage_until_a_probe_passes(tmp_path: Path) -> None:
    s1, s2 = str(tmp_path / "s1"), str(tmp_path / "s2")
    for s in (s1, s2):
        Path(s).mkdir()
    outcome: dict[str, str | None] = {}
    prober = _prober([s1, s2], outcome)
    assert prober.run() == []  # both pass: no change
    assert prober.set_aside(s1, "an upload failed on it: Input/output error") is True
    assert prober.aside() == [s1]
    health = {h.path: h for h in prober.check([s1, s2], check_mounts=False)}
    assert health[s1].placeable is False
    assert health[s1].problem == "an upload failed on it: Input/output error"
    assert health[s1].probe_json()["kind"] == "upload"
    assert health[s2].placeable is True and health[s2].ok

    outcome[s1] = "cannot be written: Input/output error"
    assert prober.run(only=prober.aside()) == []  # still down: its fall was logged already
    assert prober.set_aside(s1, "again") is False  # down already: nothing new to log
    assert prober.verdict(s1).problem == "cannot be written: Input/output error"

    outcome[s1] = None
    changes = prober.run(only=prober.aside())
    assert [(s, v.problem) for s, v in changes] == [(s1, None)]  # up again: logged once
    assert prober.aside() == []
    assert all(h.placeable for h in prober.check([s1, s2], check_mounts=False))


def test_a_probe_begun_before_the_failure_does_not_clear_it(tmp_path: Path) -> None:
    s1 = str(tmp_path / "s1")
    Path(s1).mkdir()
    prober: Prober

    def meanwhile(storage: str) -> None:  # an upload fails while the probe runs
        prober.set_aside(storage, "an upload failed on it: No space left on device")

    prober = _prober([s1], {}, during=meanwhile)
    assert prober.run() == []
    assert prober.verdict(s1).problem == "an upload failed on it: No space left on device"
    assert prober.aside() == [s1]

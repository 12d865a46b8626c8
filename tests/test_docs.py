"""The documentation as a reader meets it: the README is a front door to ``docs/``, the
generated references say what their sources say now, links lead somewhere, and the
contract's sections can be cited by name."""

import importlib.util
import re
import shutil
import unicodedata
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

NOT_YET_MERGED: set[str] = set()
"""Pages the README lists that other branches of the docs work write; once they are
merged this allowance goes (the README's links are then all checked)."""


def _gendocs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gendocs", ROOT / "tools" / "gendocs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gendocs = _gendocs()


def test_the_generated_references_say_what_their_sources_say() -> None:
    stale = [str(p.relative_to(ROOT)) for p in gendocs.stale(ROOT)]
    assert stale == [], f"{stale} differ from their sources: run `make docs` and commit them"


def test_a_changed_source_makes_its_page_stale(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """The check above can fail: a description changed in schema.json and not carried
    into the page is reported, with what to do."""
    for page, source in gendocs.SOURCES.items():
        for name in (page, source):
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / name, tmp_path / name)
    schema = tmp_path / "stor/config/schema.json"
    schema.write_text(schema.read_text().replace("Seconds to wait for memcached",
                                                 "Seconds to wait for a memcached answer"))
    assert gendocs.stale(tmp_path) == [tmp_path / "docs/configuration-reference.rst"]
    assert gendocs.main(["--check", "--root", str(tmp_path)]) == 1
    assert "configuration-reference.rst: differs from its source: run `make docs`" \
        in capsys.readouterr().err
    assert gendocs.main(["--root", str(tmp_path)]) == 0
    assert gendocs.stale(tmp_path) == []
    assert "Seconds to wait for a memcached answer" in \
        (tmp_path / "docs/configuration-reference.rst").read_text()


def test_every_config_key_and_api_operation_is_in_its_reference() -> None:
    import json

    schema = json.loads((ROOT / "stor/config/schema.json").read_text())
    config_titles = _titles((DOCS / "configuration-reference.rst").read_text())
    assert [f"``{key}``" for key in schema["properties"]] == \
        [t for t in config_titles if t.startswith("``")]
    api = json.loads((ROOT / "stor/http/openapi.json").read_text())
    api_titles = set(_titles((DOCS / "api-reference.rst").read_text()))
    for path, item in api["paths"].items():
        for method in set(item) & set(gendocs.METHODS):
            assert f"``{method.upper()} {path}``" in api_titles


def test_the_readme_is_a_front_door() -> None:
    readme = (ROOT / "README.rst").read_text()
    assert len(readme.splitlines()) <= 300
    for needed in ("make run", "make test", "Running it", "What a 2xx means"):
        assert needed in readme, needed
    linked = {target for target, _ in _links(readme)}
    pages = {f"docs/{p.name}" for p in DOCS.iterdir() if p.suffix in (".rst", ".md")}
    assert pages <= linked, f"pages the README does not lead to: {sorted(pages - linked)}"


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.rst")) + ["../README.rst"])
def test_links_lead_to_a_page_and_a_section(page: str) -> None:
    source = (DOCS / page).resolve()
    missing = []
    for target, anchor in _links(source.read_text()):
        path = (source.parent / target).resolve()
        name = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
        if not path.exists():
            if name not in NOT_YET_MERGED:
                missing.append(name)
        elif anchor and anchor not in _anchors(path):
            missing.append(f"{name}#{anchor}")
    assert missing == []


def test_the_contract_has_named_sections_and_points_inside_the_repository() -> None:
    spec = (DOCS / "SPEC.md").read_text()
    numbered = re.findall(r"^## (\d+)\. ", spec, flags=re.M)
    assert numbered == [str(n) for n in range(1, 10)]
    for n in numbered:
        assert re.search(rf'<a id="s{n}-[a-z0-9-]+"></a>\n\n## {n}\. ', spec), n
    assert "seed/" not in spec and "../" not in spec and "/work/" not in spec


def test_code_cites_sections_the_contract_has() -> None:
    """``docs/SPEC.md §n`` in a docstring or comment names a section that exists; and
    no code points at a README section (the manual is in docs/)."""
    sections = set(re.findall(r"^## (\d+)\. ", (DOCS / "SPEC.md").read_text(), flags=re.M))
    wrong = []
    for path in [*ROOT.glob("stor/**/*.py"), *ROOT.glob("tests/**/*.py")]:
        text = path.read_text()
        for cited in re.findall(r"SPEC(?:\.md)? (§\d+(?:, §\d+)*)", text):
            wrong += [f"{path.name}: {n}" for n in re.findall(r"\d+", cited) if n not in sections]
        if path.relative_to(ROOT).parts[0] == "stor" and re.search(r'README(\.rst)? "', text):
            wrong.append(f"{path.name}: cites a README section")
    assert wrong == []


def _titles(text: str) -> list[str]:
    """reStructuredText section titles: a line underlined by one repeated punctuation mark."""
    lines = text.splitlines()
    return [line for line, under in zip(lines, lines[1:])
            if line.strip() and re.fullmatch(r"([=\-~^`#*+])\1{2,}", under)
            and len(under) >= len(line) and not re.fullmatch(r"([=\-~^`#*+])\1+", line)]


def _anchors(path: Path) -> set[str]:
    """The ids a page's sections get (docutils' ``make_id``), and explicit ``<a id>``s."""
    text = path.read_text()
    if path.suffix == ".md":
        return set(re.findall(r'<a id="([^"]+)"></a>', text))
    return {_make_id(t) for t in _titles(text)}


def _make_id(title: str) -> str:
    plain = unicodedata.normalize("NFKD", title.replace("``", "")).encode("ascii", "ignore")
    return re.sub(r"[^a-z0-9]+", "-", plain.decode().lower()).strip("-")


def _links(text: str) -> list[tuple[str, str]]:
    """Every ``text <target#anchor>`_`` link to a file of the repository."""
    found = []
    for target in re.findall(r"`[^`<]*<([^>`]+)>`__?", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        found.append((path, anchor))
    return found

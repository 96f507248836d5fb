"""The reference data of the official implementation (tests/reference) is in the repository and unchanged."""

import hashlib

from tests.conftest import REFERENCE, REPO


def _listed() -> dict[str, str]:
    """{relative path: sha256} from tests/reference/SHA256SUMS (`sha256sum` format)."""
    sums = {}
    for line in (REFERENCE / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        sums[name.lstrip("*")] = digest
    return sums


def test_reference_lives_inside_the_repository():
    assert REFERENCE.resolve().is_relative_to(REPO.resolve())
    assert (REFERENCE / "golden").is_dir() and (REFERENCE / "state_dict").is_dir()


def test_reference_files_match_their_checksums():
    listed = _listed()
    assert len(listed) == 10
    for name, digest in listed.items():
        data = (REFERENCE / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, f"{name} was changed"


def test_every_reference_file_is_listed():
    present = {p.relative_to(REFERENCE).as_posix() for p in REFERENCE.rglob("*") if p.is_file()}
    own = {"README.md", "SHA256SUMS"}  # written for this repository, not part of the copy
    assert present - own == set(_listed())

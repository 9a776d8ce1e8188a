"""`facestream enroll ...` as a real process, on a private state directory."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from enrollment.store import EnrollmentStore

REPO_ROOT = Path(__file__).resolve().parent.parent
Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def facestream(tmp_path: Path, yunet_path: Path) -> Run:
    """Run ``facestream --state-dir TMP ... ARGS``; returns the finished process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACESTREAM_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    options = [
        "--state-dir", str(tmp_path / "state"),
        "--cache-dir", str(tmp_path / "cache"),
        "--models-dir", str(yunet_path.parent),
    ]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "facestream", *options, *args],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )

    return run


def _lines(text: str, prefix: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(prefix)]


def test_import_list_rename_remove_and_add_back(
    facestream: Run, shared_dir: Path, tmp_path: Path
) -> None:
    people = shared_dir / "people"
    imported = facestream("enroll", "import", str(people))
    assert imported.returncode == 0, imported.stderr
    assert len(_lines(imported.stdout, "accepted  ")) == 5
    assert "4 people enrolled, 5 samples" in imported.stdout
    assert "photo" in imported.stderr and "5/5" in imported.stderr  # the progress bar

    root = tmp_path / "state" / "enrollment"
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert stat.S_IMODE((root / "store.sqlite3").stat().st_mode) == 0o600

    listed = facestream("enroll", "list")
    assert listed.returncode == 0
    rows = listed.stdout.splitlines()
    assert rows[0].split() == ["NAME", "SAMPLES", "UPDATED", "ID"]
    assert [row.split("  ")[0] for row in rows[1:5]] == [
        "Alex Lacamoire", "Barack Obama", "Joe Biden", "Lin Manuel Miranda",
    ]
    assert rows[-1].startswith("4 people, 5 samples")

    renamed = facestream("enroll", "rename", "lin manuel miranda", "Lin-Manuel Miranda")
    assert renamed.returncode == 0, renamed.stderr
    assert "'Lin-Manuel Miranda'" in renamed.stdout

    refused = facestream("enroll", "remove", "Joe Biden")  # stdin is no terminal, no --yes
    assert refused.returncode == 2
    assert "--yes" in refused.stderr and "Traceback" not in refused.stderr
    removed = facestream("enroll", "remove", "Joe Biden", "--yes")
    assert removed.returncode == 0, removed.stderr
    unknown = facestream("enroll", "remove", "Joe Biden", "--yes")
    assert unknown.returncode == 2 and "Joe Biden" in unknown.stderr

    added = facestream("enroll", "add", "Joe Biden", str(people / "joe_biden" / "biden.jpg"))
    assert added.returncode == 0, added.stderr
    assert _lines(added.stdout, "accepted  ") == [
        f"accepted  {people / 'joe_biden' / 'biden.jpg'}: one face"
    ]
    with EnrollmentStore(root) as store:
        assert {p.name: p.sample_count for p in store.list_people()} == {
            "Alex Lacamoire": 1, "Barack Obama": 2, "Joe Biden": 1, "Lin-Manuel Miranda": 1,
        }
        assert store.revision() > 0


def test_add_reports_each_rejected_file(facestream: Run, shared_dir: Path, tmp_path: Path) -> None:
    not_image = tmp_path / "photo.jpg"
    not_image.write_text("not a photo")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    result = facestream(
        "enroll", "add", "李小龙",
        str(shared_dir / "media" / "two_people.jpg"), str(not_image), str(empty),
    )
    assert result.returncode == 1
    assert _lines(result.stdout, "rejected  ") == [
        f"rejected  {shared_dir / 'media' / 'two_people.jpg'}: 2 faces and none clearly the "
        "largest (the largest has 1.1x the area of the next, 2x needed): use a photo of one "
        "person",
        f"rejected  {not_image}: unreadable file (not an image, or in a format not supported)",
        f"rejected  {empty}: empty file (0 bytes)",
    ]
    assert "李小龙 was not enrolled" in result.stdout
    listed = facestream("enroll", "list")
    assert listed.stdout.startswith("no one is enrolled yet")

    mixed = facestream(
        "enroll", "add", "李小龙",
        str(shared_dir / "media" / "biden.jpg"), str(shared_dir / "media" / "biden.jpg"),
    )
    assert mixed.returncode == 0  # a duplicate is not a failure
    assert [line.split(":")[0] for line in mixed.stdout.splitlines()[:2]] == [
        f"accepted  {shared_dir / 'media' / 'biden.jpg'}",
        f"rejected  {shared_dir / 'media' / 'biden.jpg'}",
    ]
    assert "duplicate of an existing sample" in mixed.stdout
    assert "李小龙: 1 sample" in mixed.stdout


def test_copy_moves_everyone_into_postgresql_and_a_second_run_copies_nothing_twice(
    facestream: Run, shared_dir: Path, tmp_path: Path, postgres_url: str
) -> None:
    """A lab growing past one box: its SQLite store copied into PostgreSQL."""
    assert facestream("enroll", "import", str(shared_dir / "people")).returncode == 0
    copied = facestream("enroll", "copy", "--to", postgres_url)
    assert copied.returncode == 0, copied.stderr
    assert f"4 people, 5 samples copied to {postgres_url}" in copied.stdout, copied.stdout
    again = facestream("enroll", "copy", "--to", postgres_url)  # as after an interruption
    assert again.returncode == 0, again.stderr
    assert "4 people, 0 samples copied" in again.stdout
    assert "Barack Obama: 0 samples copied (2 there already)" in again.stdout

    def listed(*options: str) -> list[str]:
        done = facestream("enroll", "list", *options)
        assert done.returncode == 0, done.stderr
        return [" ".join(line.split()[:-3]) + " " + line.split()[-3]  # name, samples
                for line in done.stdout.splitlines()[1:-1]]

    assert listed("--database-url", postgres_url) == listed()
    with (EnrollmentStore(tmp_path / "state" / "enrollment") as here,
          EnrollmentStore(postgres_url) as there):
        ours, theirs = here.samples(), there.samples()
        assert sorted(s.sha256 for s in ours) == sorted(s.sha256 for s in theirs)
        by_sha = {s.sha256: s for s in theirs}
        for sample in ours:
            copy = by_sha[sample.sha256]
            assert (here.load_crop(sample) == there.load_crop(copy)).all()
            assert copy.quality == sample.quality and copy.source == sample.source
            assert (copy.landmarks == sample.landmarks).all()

    own = facestream("enroll", "copy", "--to", str(tmp_path / "state" / "enrollment"))
    assert own.returncode == 2 and "own store" in own.stderr, own.stderr

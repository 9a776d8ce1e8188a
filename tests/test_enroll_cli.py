"""`facestream enroll ...` as a real process, on a private state directory."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from enroll_support import blank_png

from enrollment.store import EnrollmentStore

REPO_ROOT = Path(__file__).resolve().parent.parent
Run = Callable[..., subprocess.CompletedProcess[str]]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACESTREAM_")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


@pytest.fixture
def command(tmp_path: Path, yunet_path: Path) -> list[str]:
    """``facestream --state-dir TMP ...``, to which a test adds the arguments."""
    return [
        sys.executable, "-m", "facestream",
        "--state-dir", str(tmp_path / "state"),
        "--cache-dir", str(tmp_path / "cache"),
        "--models-dir", str(yunet_path.parent),
    ]


@pytest.fixture
def facestream(command: list[str]) -> Run:
    """Run ``facestream --state-dir TMP ... ARGS`` (in ``cwd``, the repository by
    default); returns the finished process."""

    def run(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, *args],
            cwd=cwd,
            env=_env(),
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
    taken = facestream("enroll", "rename", "Alex Lacamoire", "barack obama")
    assert taken.returncode == 2 and "Traceback" not in taken.stderr
    assert "'barack obama' is taken: 'Barack Obama' is already enrolled" in taken.stderr

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
    huge, large = tmp_path / "huge.png", tmp_path / "large.png"
    huge.write_bytes(blank_png(30000))  # past Pillow's own limit: refused in the same words
    large.write_bytes(blank_png(13000))  # past Pillow's warning, which is not printed
    result = facestream(
        "enroll", "add", "李小龙",
        str(shared_dir / "media" / "two_people.jpg"), str(not_image), str(empty),
        str(huge), str(large),
    )
    assert result.returncode == 1
    assert "Decompression" not in result.stderr, result.stderr
    assert _lines(result.stdout, "rejected  ") == [
        f"rejected  {shared_dir / 'media' / 'two_people.jpg'}: 2 faces and none clearly the "
        "largest (the largest has 1.1x the area of the next, 2x needed): use a photo of one "
        "person",
        f"rejected  {not_image}: unreadable file (not an image, or in a format not supported)",
        f"rejected  {empty}: empty file (0 bytes)",
        f"rejected  {huge}: image too large (30000x30000 = 900 MP, limit 40 MP)",
        f"rejected  {large}: image too large (13000x13000 = 169 MP, limit 40 MP)",
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


def test_list_lines_up_names_in_any_script_as_a_terminal_shows_them(
    facestream: Run, shared_dir: Path
) -> None:
    """The columns after a name start where the terminal shows them: a Chinese letter
    takes two columns, a Devanagari vowel sign none, an emoji family of five code
    points joined by U+200D two."""
    assert facestream("enroll", "import", str(shared_dir / "people")).returncode == 0
    columns = {"王小明": 6, "प्रिया": 4, "👩\u200d👩\u200d👧 Family": 9, "Joe Biden": 9}
    for old, new in zip(["Alex Lacamoire", "Barack Obama", "Lin Manuel Miranda"], columns,
                        strict=False):
        assert facestream("enroll", "rename", old, new).returncode == 0
    rows = facestream("enroll", "list").stdout.splitlines()
    widest = max(columns.values())
    for name, width in columns.items():
        row = next(r for r in rows if r.startswith(name))
        # the SAMPLES column starts after the widest name and two spaces
        gap = widest - width + 2
        after = row[len(name):]
        assert after[:gap] == " " * gap and after[gap].isdigit(), (name, row)


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


def test_a_reference_that_is_one_persons_id_and_anothers_name_erases_no_one(
    facestream: Run, shared_dir: Path, tmp_path: Path
) -> None:
    media = shared_dir / "media"
    assert facestream("enroll", "add", "Barack Obama", str(media / "obama.jpg")).returncode == 0
    root = tmp_path / "state" / "enrollment"
    legacy = "0123456789abcdef"
    with EnrollmentStore(root) as store:
        [obama] = store.list_people()
        # a person named like Obama's id, as in a store written before such names were
        # refused (the store refuses them now, so the row goes in by hand)
        with store.db.change() as conn:
            conn.execute(
                "INSERT INTO people (id, name, name_key, created, updated) VALUES (?, ?, ?, ?, ?)",
                (legacy, obama.id, obama.id, obama.created, obama.created),
            )
    added = facestream("enroll", "add", legacy, str(media / "alex-lacamoire.png"))  # by id
    assert added.returncode == 0 and f"{obama.id}: 1 sample" in added.stdout, added.stdout

    for verb in (["remove", obama.id, "--yes"], ["rename", obama.id, "Someone"],
                 ["add", obama.id, str(media / "biden.jpg")]):
        refused = facestream("enroll", *verb)
        assert refused.returncode == 2, (verb, refused.stdout)
        assert "Traceback" not in refused.stderr
        assert (f"{obama.id!r} is ambiguous: it is the id of 'Barack Obama' and the name of "
                f"the person with the id {legacy}") in refused.stderr, refused.stderr
    with EnrollmentStore(root) as store:
        assert {p.id: (p.name, p.sample_count) for p in store.list_people()} == {
            obama.id: ("Barack Obama", 1), legacy: (obama.id, 1),
        }

    removed = facestream("enroll", "remove", legacy, "--yes")  # its own id is unambiguous
    assert removed.returncode == 0 and f"removed {obama.id}: 1 sample erased" in removed.stdout
    with EnrollmentStore(root) as store:
        assert [(p.name, p.sample_count) for p in store.list_people()] == [("Barack Obama", 1)]
    new = facestream("enroll", "add", "FEEDFACE0BADF00D", str(media / "biden.jpg"))
    assert new.returncode == 2 and "shape of a person id" in new.stderr, new.stderr


def test_import_rejects_a_folder_with_a_disguised_name_and_imports_everyone_else(
    facestream: Run, shared_dir: Path, tmp_path: Path
) -> None:
    people = tmp_path / "people"
    shutil.copytree(shared_dir / "people", people)
    disguised = people / "Ana\u202eLopez"  # a right-to-left override in the name
    disguised.mkdir()
    shutil.copy(shared_dir / "media" / "two_people.jpg", disguised)
    imported = facestream("enroll", "import", str(people))
    assert imported.returncode == 1, imported.stderr  # something was rejected
    assert "\u202e" not in imported.stdout + imported.stderr  # not even in the progress bar
    [line] = _lines(imported.stdout, "rejected  ")
    assert line.startswith(f"rejected  {people}/Ana\\u202eLopez: folder not imported, its "
                           "name is not a usable person name"), line
    assert "U+202E RIGHT-TO-LEFT OVERRIDE" in line
    assert len(_lines(imported.stdout, "accepted  ")) == 5
    assert "5 of 5 files accepted, 1 folder not imported" in imported.stdout
    assert "4 people enrolled, 5 samples" in imported.stdout


def test_import_refuses_folders_that_name_one_person_twice(
    facestream: Run, shared_dir: Path, tmp_path: Path
) -> None:
    """Dave/ and dave/, or José in NFC and in NFD: one person would get both folders'
    photos, perhaps of two people; neither is imported, the others are."""
    media, people = shared_dir / "media", tmp_path / "people"
    shutil.copytree(shared_dir / "people", people)
    for folder, photo in (("Dave", "biden.jpg"), ("dave", "obama.jpg"),
                          ("Jos\u00e9", "alex-lacamoire.png"), ("Jose\u0301", "obama2.jpg")):
        (people / folder).mkdir()
        shutil.copy(media / photo, people / folder)
    imported = facestream("enroll", "import", str(people))
    assert imported.returncode == 1, imported.stderr
    rejected = sorted(_lines(imported.stdout, "rejected  "))
    dave = "the folders 'Dave', 'dave' all name Dave; put the photos of one person in one folder"
    jose = ("the folders 'Jose\\u0301', 'Jos\\xe9' all name Jos\u00e9; put the photos of one "
            "person in one folder")
    assert rejected == sorted(
        f"rejected  {people / folder}: folder not imported: {why}"
        for folder, why in (("Dave", dave), ("dave", dave), ("Jos\u00e9", jose),
                            ("Jose\u0301", jose))
    ), imported.stdout
    assert "4 people enrolled, 5 samples" in imported.stdout


def test_import_skips_files_that_are_no_images_and_fails_only_for_a_bad_photo(
    facestream: Run, shared_dir: Path, tmp_path: Path
) -> None:
    """A data set's README beside the people (ORL's), notes in a person's folder."""
    people = tmp_path / "people"
    shutil.copytree(shared_dir / "people", people)
    (people / "README").write_text("The ORL database of faces\n")
    (people / "joe_biden" / "README.txt").write_text("from the White House\n")
    (people / "joe_biden" / "meta.json").write_text("{}\n")
    imported = facestream("enroll", "import", str(people))
    assert imported.returncode == 0, imported.stdout
    assert _lines(imported.stdout, "rejected  ") == []
    assert _lines(imported.stdout, "skipped ") == [
        "skipped 3 files that are not images: README, joe_biden/README.txt, joe_biden/meta.json"
    ]
    assert "5 of 5 files accepted" in imported.stdout

    (people / "joe_biden" / "bad.jpg").write_text("not a photo\n")  # named as an image
    again = facestream("enroll", "import", str(people))
    assert again.returncode == 1
    assert [line for line in _lines(again.stdout, "rejected  ") if "duplicate" not in line] == [
        f"rejected  {people / 'joe_biden' / 'bad.jpg'}: unreadable file (not an image, or in a "
        "format not supported)"
    ]


def test_add_that_enrolls_no_one_fails_even_for_duplicates(
    facestream: Run, shared_dir: Path, tmp_path: Path
) -> None:
    photo = str(shared_dir / "media" / "obama.jpg")
    assert facestream("enroll", "add", "Barack Obama", photo).returncode == 0
    duplicate = facestream("enroll", "add", "Barry", photo)
    assert duplicate.returncode == 1
    assert "duplicate of an existing sample" in duplicate.stdout
    assert "no photo was accepted: Barry was not enrolled" in duplicate.stdout
    again = facestream("enroll", "add", "Barack Obama", photo)  # nothing new: no failure
    assert again.returncode == 0 and "Barack Obama: 1 sample" in again.stdout
    with EnrollmentStore(tmp_path / "state" / "enrollment") as store:
        assert [(p.name, p.sample_count) for p in store.list_people()] == [("Barack Obama", 1)]


def test_a_store_option_that_names_no_store_is_refused_and_writes_nothing(
    facestream: Run, shared_dir: Path, tmp_path: Path
) -> None:
    assert facestream("enroll", "add", "Joe Biden", str(shared_dir / "media" / "biden.jpg")
                      ).returncode == 0
    here = tmp_path / "here"
    here.mkdir()
    copied = facestream("enroll", "copy", "--to", "", cwd=here)
    assert copied.returncode == 2 and "--to needs a store" in copied.stderr, copied.stderr
    listed = facestream("enroll", "list", "--database-url", "notaurl", cwd=here)
    assert listed.returncode == 2, listed.stdout
    refusal = "must be a PostgreSQL URL, postgresql://USER@HOST/DB; the value given is not a URL"
    assert refusal in listed.stderr, listed.stderr
    assert list(here.iterdir()) == []  # no store made where the command ran
    with EnrollmentStore(tmp_path / "state" / "enrollment") as store:
        assert [(p.name, p.sample_count) for p in store.list_people()] == [("Joe Biden", 1)]


def _interrupted(argv: list[str], after: str) -> tuple[int, str, str]:
    """Run ``argv`` and press Ctrl-C (SIGINT) once a line it prints starts with
    ``after``; the exit status, stdout and stderr."""
    process = subprocess.Popen(argv, cwd=REPO_ROOT, env=_env(), stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        seen = []
        for line in process.stdout:  # each line comes as soon as its photo is done
            seen.append(line)
            if line.startswith(after):
                process.send_signal(signal.SIGINT)
                break
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    return process.returncode, "".join(seen) + out, err


def _faceless_photos(folder: Path, count: int) -> list[Path]:
    """``count`` large photos without a face (each takes a while to search)."""
    folder.mkdir(parents=True)
    gradient = np.tile(np.linspace(0, 255, 6000, dtype=np.uint8), (4500, 1))
    ok, data = cv2.imencode(".jpg", cv2.merge([gradient, gradient[::-1], gradient]))
    assert ok
    photos = [folder / f"{i:02d}.jpg" for i in range(count)]
    for photo in photos:
        photo.write_bytes(data.tobytes())
    return photos


def test_interrupted_import_says_what_it_stored_and_leaves_no_one_without_a_sample(
    command: list[str], facestream: Run, shared_dir: Path, tmp_path: Path
) -> None:
    people = tmp_path / "people"
    (people / "ada_lovelace").mkdir(parents=True)
    shutil.copy(shared_dir / "media" / "obama.jpg", people / "ada_lovelace" / "1.jpg")
    _faceless_photos(people / "grace_hopper", 16)
    status, out, err = _interrupted(
        [*command, "enroll", "import", str(people)], f"rejected  {people / 'grace_hopper'}"
    )
    assert status == 130, err
    assert err.strip().splitlines()[-1] == "facestream: interrupted"
    assert f"accepted  {people / 'ada_lovelace' / '1.jpg'}: one face" in out
    summary = out.strip().splitlines()[-1]
    assert summary.startswith("interrupted after ") and summary.endswith(" files: 1 accepted")
    # Grace Hopper, created by the import and given no sample, is gone again
    listed = facestream("enroll", "list")
    assert listed.stdout.splitlines()[-1].startswith("1 person, 1 sample"), listed.stdout


def test_interrupted_add_removes_only_the_person_it_created(
    command: list[str], facestream: Run, shared_dir: Path, tmp_path: Path
) -> None:
    assert facestream("enroll", "add", "Ada Lovelace", str(shared_dir / "media" / "obama.jpg")
                      ).returncode == 0
    photos = [str(p) for p in _faceless_photos(tmp_path / "faceless", 16)]
    for name in ("Alan Turing", "Ada Lovelace"):
        status, out, err = _interrupted([*command, "enroll", "add", name, *photos], "rejected  ")
        assert status == 130, err
        assert out.startswith(f"rejected  {photos[0]}: no face found\n")
        assert out.strip().splitlines()[-1].startswith("interrupted after ")
    with EnrollmentStore(tmp_path / "state" / "enrollment") as store:
        assert [(p.name, p.sample_count) for p in store.list_people()] == [("Ada Lovelace", 1)]


def test_copy_into_a_folder_of_the_users_leaves_its_mode_alone(
    facestream: Run, shared_dir: Path, tmp_path: Path
) -> None:
    """`enroll copy --to DIR` made an existing DIR 0700 (``--to /tmp`` would have made
    it so); the store's own files and folders are owner-only all the same."""
    assert facestream("enroll", "add", "Joe Biden", str(shared_dir / "media" / "biden.jpg")
                      ).returncode == 0
    backup = tmp_path / "backup"
    backup.mkdir()
    backup.chmod(0o755)
    copied = facestream("enroll", "copy", "--to", str(backup))
    assert copied.returncode == 0, copied.stderr
    assert stat.S_IMODE(backup.stat().st_mode) == 0o755
    assert stat.S_IMODE((backup / "store.sqlite3").stat().st_mode) == 0o600
    (crop,) = (backup / "samples").glob("*/*.png")
    for folder in (backup / "samples", crop.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    assert stat.S_IMODE(crop.stat().st_mode) == 0o600
    made = tmp_path / "made" / "store"  # one facestream makes is private
    assert facestream("enroll", "copy", "--to", str(made)).returncode == 0
    assert stat.S_IMODE(made.stat().st_mode) == 0o700

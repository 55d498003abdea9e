"""COURSE.md: every lesson's command runs as written, and the figures it draws are real PNGs.

Commands that need a trained checkpoint get a micro one in place of out/tiny.pt (it draws
rough pictures, but the same code runs). Each command runs in a scratch folder, so the
files it writes land there.
"""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import train

ROOT = Path(__file__).resolve().parent.parent


def lesson_commands():
    """(lesson title, command) for every "**Run**" block of COURSE.md."""
    text = (ROOT / "COURSE.md").read_text()
    lessons = re.split(r"\n## ", text)[1:]
    found = []
    for lesson in lessons:
        title = lesson.splitlines()[0]
        match = re.search(r"\*\*Run\*\*\s*```bash\n(.+?)\n```", lesson, re.S)
        assert match, f"lesson {title!r} has no **Run** command"
        found.append((title, match.group(1).strip()))
    return found


COMMANDS = lesson_commands()

# What each lesson's command must leave behind: file -> (width, height) in pixels, or None for "any".
EXPECTED_FILES = {
    "lfq.png": (4 * (8 * 33 - 1), 4 * (3 * 32 + 4)),      # 8 pictures, 3 rows, 4x enlarged
    "masks/t2i_mask.png": None, "masks/mmu_mask.png": None, "masks/lm_mask.png": None,
    "out/micro/samples.png": None, "out/micro/curves.png": (2 * 420, 260),
    "film.png": (4 * 4 * 34, 4 * 34),                       # 4 MaskGIT steps of the micro preset
    "film_maskgit.png": (4 * 4 * 34, 4 * 34),
}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A folder with out/tiny.pt (a micro checkpoint, 3 steps) and assets/."""
    folder = tmp_path_factory.mktemp("course")
    train.main(["--preset", "micro", "--steps", "3", "--no-eval", "--out-dir", str(folder / "out")])
    (folder / "out" / "micro.pt").rename(folder / "out" / "tiny.pt")
    (folder / "assets").symlink_to(ROOT / "assets")
    return folder


def test_there_are_six_to_eight_lessons():
    assert 6 <= len(COMMANDS) <= 8, [title for title, _ in COMMANDS]


@pytest.mark.parametrize("title, command", COMMANDS, ids=[title.split(".")[0] for title, _ in COMMANDS])
def test_the_lesson_command_runs_and_draws(scratch, title, command):
    words = shlex.split(command)
    assert words[0] == "python" and words[1].endswith(".py"), command
    result = subprocess.run([sys.executable, str(ROOT / words[1]), *words[2:]], cwd=scratch,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    assert result.stdout.strip(), f"{command} printed nothing"
    for name, size in EXPECTED_FILES.items():
        if (name.rsplit("/", 1)[0] if "/" in name else name) in words:
            path = scratch / name
            assert path.is_file() and path.stat().st_size > 0, f"{command} did not write {name}"
            if size is not None:
                assert Image.open(path).size == size, f"{name} is {Image.open(path).size}, expected {size}"

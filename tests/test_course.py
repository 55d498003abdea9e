"""COURSE.md: every lesson's command runs as written, and the figures it draws are real PNGs.

The lessons use the shipped checkpoint assets/tiny.pt (the tiny run, seed 0). Each command
runs in a scratch folder, so the files it writes land there. The shipped checkpoint itself
is checked to draw and answer right.
"""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import data
from checkpoint import load_checkpoint, recommended_settings
from sampling import answer_questions, generate_pictures

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
    "film.png": (4 * 16 * 34, 4 * 34),                      # the 16 MaskGIT steps the tiny run stores
    "film_maskgit.png": (4 * 16 * 34, 4 * 34),
    "story.png": None,
}


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """An empty folder with assets/ (and so assets/tiny.pt) beside the commands."""
    folder = tmp_path_factory.mktemp("course")
    (folder / "assets").symlink_to(ROOT / "assets")
    return folder


def test_there_are_six_to_ten_lessons():
    assert 6 <= len(COMMANDS) <= 10, [title for title, _ in COMMANDS]


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


def test_the_shipped_checkpoint_draws_and_answers_right():
    """assets/tiny.pt, the checkpoint the lessons use: a prompt drawn right, a question answered."""
    model, vq, text_tokenizer, extra = load_checkpoint(ROOT / "assets" / "tiny.pt")
    assert extra["made_by"]["command"] == "python train.py --tiny" and extra["made_by"]["seed"] == 0
    prompts = ["a red circle in the center", "a blue square at the top left"]
    settings = recommended_settings(extra, "t2i")
    codes = generate_pictures(model, [text_tokenizer.encode(p) for p in prompts], "mtp", settings,
                              torch.Generator().manual_seed(0))
    pictures = data.decode_codes(vq, codes)
    assert [data.matches(picture, prompt) for picture, prompt in zip(pictures, prompts)] == [True, True]
    example = np.array(Image.open(ROOT / "assets" / "example.png").convert("RGB"))
    image_codes = data.encode_pictures(vq, example[None], "cpu")
    [answer] = answer_questions(model, image_codes, [text_tokenizer.encode("what color is the circle?")])
    assert text_tokenizer.decode(answer).strip() == "red"


def test_the_shipped_story_checkpoint_tells_stories_right():
    """assets/story.pt (README, lesson 9): the first scored stories, the README's picture.
    Three of the four openings drawn right, and three of the four stories right frame after
    frame (the shipped model over its 90 scored stories: frame 1 right 99%, whole stories 94%)."""
    import evaluate
    from stories import scored_stories

    model, vq, text_tokenizer, extra = load_checkpoint(ROOT / "assets" / "story.pt")
    assert extra["made_by"]["command"] == "python train.py --preset story" and extra["made_by"]["seed"] == 0
    from commands import config_from_dict, sampling_settings
    from train import PRESETS
    assert extra["sampling"]["t2i"] == sampling_settings(PRESETS["story"]), \
        "assets/story.pt must store the story preset's drawing defaults (its scores were measured with them)"
    assert config_from_dict(extra["train_config"]) == PRESETS["story"], \
        "assets/story.pt must be the story preset's model: its stored recipe differs from PRESETS['story']"
    assert vq.cfg.local_window == PRESETS["story"].vq_local_window, "assets/story.pt's image tokenizer has other windows"
    told = scored_stories(model, vq, text_tokenizer, evaluate.scoring_of_checkpoint(extra), first=4)
    first_frames = [results[0][1] for _, _, results in told]
    whole = [all(right for _, right in results) for _, _, results in told]
    assert sum(first_frames) >= 3 and sum(whole) >= 3, (
        f"frame 1 right {first_frames}, whole stories right {whole}: "
        + " | ".join(" / ".join(sentences) for _, sentences, _ in told))

"""The exercise mechanism of COURSE.md: a student's version runs against the project's tests.

A right version written differently from the project's (loops instead of tensor
operations) passes; a plausible wrong one fails, with a message that draws the row of the
mask that is wrong.
"""

import importlib.util
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EXERCISES

ROOT = Path(__file__).resolve().parent.parent

RIGHT = '''
import torch

def t2i_attention_mask(input_ids, pad_id, soi_id, eoi_id):
    batch, length = input_ids.shape
    allowed = torch.zeros(batch, length, length, dtype=torch.bool)
    for b in range(batch):
        ids = input_ids[b].tolist()
        start, end = ids.index(soi_id), ids.index(eoi_id)
        for row in range(length):
            for col in range(length):
                if ids[row] == pad_id:
                    allowed[b, row, col] = ids[col] == pad_id and col <= row
                elif ids[col] != pad_id:
                    in_image = start <= row <= end and start <= col <= end
                    allowed[b, row, col] = col <= row or in_image
    return allowed
'''

# A plausible mistake: the picture attends causally, like the text.
WRONG = '''
import torch

def t2i_attention_mask(input_ids, pad_id, soi_id, eoi_id):
    length = input_ids.shape[1]
    is_pad = input_ids == pad_id
    causal = torch.ones(length, length, dtype=torch.bool).tril()[None]
    real = causal & ~is_pad[:, None, :] & ~is_pad[:, :, None]
    pads = causal & is_pad[:, None, :] & is_pad[:, :, None]
    return real | pads
'''


def run_exercise(tmp_path, source, path=None, seconds=120):
    student = path or tmp_path / "mine.py"
    if source is not None:
        student.write_text(source)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_attention.py", "-k", "t2i"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SHOWO_EXERCISE": str(student), "SHOWO_EXERCISE_SECONDS": str(seconds)})


def test_a_right_version_passes(tmp_path):
    result = run_exercise(tmp_path, RIGHT)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "exercise: testing t2i_attention_mask from" in result.stdout


def test_a_wrong_version_fails_and_shows_the_wrong_row(tmp_path):
    result = run_exercise(tmp_path, WRONG)
    assert result.returncode != 0
    # The first wrong row is <soi>, which must see the whole picture ahead of it.
    assert "t2i mask, row 7 (<soi>): may look at" in result.stdout
    assert "expected . . # # # # # # # # # #" in result.stdout


def test_a_file_with_no_exercise_in_it_is_a_usage_error(tmp_path):
    result = run_exercise(tmp_path, "x = 1\n")
    assert result.returncode != 0 and "defines none of" in result.stdout + result.stderr


# ---- the starting files of exercises/ ---------------------------------------------------

STARTING_FILES = sorted((ROOT / "exercises").glob("[0-9][0-9]_*.py"))


def load_starting_file(path):
    spec = importlib.util.spec_from_file_location(f"starting_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def defined_exercises(module):
    """The exercise names a starting file defines itself (not those it imports)."""
    return [name for name in vars(module) if name in EXERCISES and getattr(module, name).__module__ == module.__name__]


def test_every_exercise_has_a_starting_file_and_every_lesson_one():
    defined = {name for path in STARTING_FILES for name in defined_exercises(load_starting_file(path))}
    assert defined == set(EXERCISES), f"exercises without a starting file: {set(EXERCISES) - defined}"
    assert {path.name[:2] for path in STARTING_FILES} == {f"{n:02d}" for n in range(1, 11)}


@pytest.mark.parametrize("path", STARTING_FILES, ids=[path.stem for path in STARTING_FILES])
def test_a_starting_file_states_its_contract_and_its_check(path):
    text = path.read_text()
    lesson = int(path.name[:2])
    assert f"-m lesson{lesson}" in text, "the starting file must give its lesson's check command"
    assert "Contract" in text and "TODO" in text
    module = load_starting_file(path)
    [name] = defined_exercises(module)
    exercise = getattr(module, name)
    assert len(exercise.__doc__) > 300, f"{name}'s contract is too short to write it from"
    with pytest.raises(NotImplementedError, match="TODO"):
        exercise(*[None] * (len(inspect.signature(exercise).parameters)))


def test_an_unfinished_starting_file_fails_its_lesson_check_with_its_todo(tmp_path):
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "lesson6",
                             "tests/test_sampling.py", "-k", "guidance"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "SHOWO_EXERCISE": str(ROOT / "exercises" / "06_guide.py")})
    assert result.returncode != 0 and "TODO: write guide (lesson 6)" in result.stdout
    assert "exercise: testing guide from" in result.stdout


STUDENT_MISTAKES = {   # what is wrong with the file -> (its text, what the one line must say)
    "a syntax error": ("import torch\n\ndef t2i_attention_mask(input_ids, pad_id, soi_id, eoi_id)\n    return 1\n",
                       "line 3: SyntaxError"),
    "a missing module": ("import torchh\n", "line 1: ModuleNotFoundError: No module named 'torchh'"),
    "an error at top level": ("x = [1, 2]\ny = x[5]\n", "line 2: IndexError"),
    "an endless loop": ("while True:\n    pass\n", "ran past 2 s: an endless loop?"),
}


@pytest.mark.parametrize("mistake", STUDENT_MISTAKES)
def test_a_mistake_in_the_students_file_is_one_line_naming_the_line(tmp_path, mistake):
    source, expected = STUDENT_MISTAKES[mistake]
    result = run_exercise(tmp_path, source, seconds=2)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and expected in output, output[-2000:]
    assert "Traceback" not in output and "ImportError while loading conftest" not in output, output[-2000:]


@pytest.mark.parametrize("where, expected", [("missing.py", "no such file"), (".", "is a folder")])
def test_a_wrong_exercise_path_is_one_line(tmp_path, where, expected):
    result = run_exercise(tmp_path, None, path=tmp_path / where)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and expected in output and "Traceback" not in output, output[-2000:]


def test_an_endless_loop_inside_the_students_function_stops_its_test_with_a_message(tmp_path):
    result = run_exercise(tmp_path, "def t2i_attention_mask(input_ids, pad_id, soi_id, eoi_id):\n"
                                    "    while True:\n        pass\n", seconds=2)
    assert result.returncode != 0 and "ran past 2 s: an endless loop?" in result.stdout, result.stdout[-2000:]

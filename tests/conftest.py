"""Shared fixtures (a micro Show-o with random weights), and the exercise hook of COURSE.md.

Exercises: write your own version of a core function in a file of your own, then run the
project's tests for it against your version:

    SHOWO_EXERCISE=my_masks.py python -m pytest -q tests/test_attention.py

Every function or class of EXERCISES that your file defines replaces the project's one
of the same name, everywhere the project uses it, for that test run. The last line of the
run says which ones were swapped in.
"""

import importlib.util
import os
import signal
import sys
import traceback

import pytest
import torch

import attention
import bench
import bpe
import checkpoint
import cli
import commands
import data
import distributed
import evaluate
import model
import pictures
import readers
import sampling
import stories
import tensor_files
import tokenizer
import train

# name -> the module that defines it (your version replaces it there and wherever it was imported)
EXERCISES = {
    "t2i_attention_mask": attention, "mmu_attention_mask": attention,     # lesson 3
    "apply_rotary": model, "QKNormAttention": model,                      # lesson 4
    "ntp_loss": model, "mtp_loss": model,                                 # lesson 5
    "merge_pair": bpe, "LookupFreeQuantizer": tokenizer,                  # lessons 1, 2
    "guide": sampling, "maskgit_step": sampling, "CachedNextToken": sampling,   # lessons 6, 7
    "prediction_targets": train,                                          # lesson 8
    "omni_attention_mask": attention,                                     # lesson 9
    "clip_pixels": readers,                                               # lesson 10
}
PROJECT_MODULES = (attention, bench, bpe, checkpoint, cli, commands, data, distributed, evaluate, model, pictures,
                   readers, sampling, stories, tensor_files, tokenizer, train)


# Seconds for loading your file and for each test, so an endless loop stops with a message.
EXERCISE_TIME_LIMIT = int(os.environ.get("SHOWO_EXERCISE_SECONDS", 120))


class TooSlow(Exception):
    """Your code ran past EXERCISE_TIME_LIMIT."""


def stop_after_the_time_limit(what):
    """Arm an alarm: past the limit, TooSlow interrupts whatever is running (Unix only)."""
    def stop(*_):
        raise TooSlow(f"{what} ran past {EXERCISE_TIME_LIMIT} s: an endless loop? (SHOWO_EXERCISE={EXERCISE})")
    if hasattr(signal, "SIGALRM"):
        signal.signal(signal.SIGALRM, stop)
        signal.alarm(EXERCISE_TIME_LIMIT)


def where_in(path, error):
    """'line N' of the student's file where `error` happened (its last frame there), or ''."""
    if isinstance(error, SyntaxError) and error.lineno:
        return f"line {error.lineno}: "
    lines = [frame.lineno for frame in traceback.extract_tb(error.__traceback__)
             if os.path.abspath(frame.filename) == os.path.abspath(path)]
    return f"line {lines[-1]}: " if lines else ""


def load_student_file(path):
    """The student's file as a module; any mistake in it is one line naming the file and line."""
    if os.path.isdir(path):
        raise pytest.UsageError(f"SHOWO_EXERCISE={path} is a folder: give your .py file")
    if not os.path.isfile(path):
        raise pytest.UsageError(f"SHOWO_EXERCISE={path}: no such file")
    spec = importlib.util.spec_from_file_location("student_exercise", path)
    student = importlib.util.module_from_spec(spec)
    sys.modules["student_exercise"] = student
    stop_after_the_time_limit(f"loading {path}")
    try:
        spec.loader.exec_module(student)
    except Exception as error:        # a syntax error, a missing import, an error at top level, too slow
        raise pytest.UsageError(f"SHOWO_EXERCISE={path}: {where_in(path, error)}"
                                f"{type(error).__name__}: {error}".splitlines()[0]) from None
    finally:
        signal.alarm(0)
    return student


def swap_in_exercise(path):
    """Replace the project's functions by the student's; returns the names replaced."""
    student = load_student_file(path)
    replaced = []
    for name, home in EXERCISES.items():
        # only what the file itself defines: a name it imports (`from model import
        # apply_rotary`) is the project's own and is not "yours"
        if getattr(getattr(student, name, None), "__module__", None) != "student_exercise":
            continue
        original, mine = getattr(home, name), getattr(student, name)
        for module in PROJECT_MODULES:               # `from attention import x` made copies of the name
            for attribute, value in list(vars(module).items()):
                if value is original:
                    setattr(module, attribute, mine)
        replaced.append(name)
    if not replaced:
        raise pytest.UsageError(f"SHOWO_EXERCISE={path} defines none of: {', '.join(EXERCISES)}")
    return replaced


EXERCISE = os.environ.get("SHOWO_EXERCISE")
SWAPPED = []


def pytest_configure(config):
    """Swap the student's versions in before any test module is imported (a UsageError here
    is one line, `ERROR: ...`, where one raised while conftest loads would be a traceback)."""
    if EXERCISE:
        SWAPPED[:] = swap_in_exercise(EXERCISE)


@pytest.fixture(autouse=True)
def exercise_time_limit():
    """With an exercise swapped in, every test stops at the time limit (an endless loop in
    the student's code fails its test with a message instead of hanging the check)."""
    if SWAPPED:
        stop_after_the_time_limit("this test, with your exercise in it,")
    yield
    if SWAPPED:
        signal.alarm(0)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test that CRASHED inside the student's code (not an assertion that failed) reports
    the crash as one line that names the student's function and line, not torch's frames."""
    outcome = yield
    report = outcome.get_result()
    if not (SWAPPED and report.failed and call.excinfo) or call.excinfo.errisinstance(AssertionError):
        return
    theirs = [frame for frame in traceback.extract_tb(call.excinfo.tb)
              if os.path.abspath(frame.filename) == os.path.abspath(EXERCISE)]
    if theirs:
        error = call.excinfo.value
        message = str(error).splitlines()[0] if str(error) else ""
        report.longrepr = (f"E   {type(error).__name__} in your {theirs[-1].name} ({EXERCISE}, line "
                           f"{theirs[-1].lineno}: `{theirs[-1].line}`): {message}\n"
                           f"E   (from {item.nodeid}: read the contract in your exercise file)")


def pytest_terminal_summary(terminalreporter):
    if SWAPPED:
        terminalreporter.write_line(f"exercise: testing {', '.join(SWAPPED)} from {EXERCISE} "
                                    f"in place of the project's")


@pytest.fixture(scope="session")
def micro(tmp_path_factory):
    """(model, vq, text_tokenizer, checkpoint path) at the 'micro' preset's sizes, untrained."""
    torch.manual_seed(0)
    tc = train.PRESETS["micro"]
    text_tokenizer = bpe.TextTokenizer.train(data.text_corpus(300, seed=0), tc.bpe_vocab_size)
    vq = tokenizer.ImageTokenizer(train.image_tokenizer_config(tc, data.IMAGE_SIZE)).eval()
    showo = model.Showo(train.model_config(tc, text_tokenizer, vq)).eval()
    path = tmp_path_factory.mktemp("micro") / "micro.pt"
    checkpoint.save_checkpoint(path, showo, vq, text_tokenizer)
    return showo, vq, text_tokenizer, path

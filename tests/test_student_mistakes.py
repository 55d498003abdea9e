"""The checks of the checks: the mistakes students make in the exercises, each caught by its
lesson's tests with a message that names it.

Each entry of MISTAKES is one plausible wrong version of an exercise's function, written as
a change to the project's own solution (the same slip a student makes in their file). The
test swaps it in everywhere (as SHOWO_EXERCISE does), runs the lesson test that must catch
it, and requires that test to fail with a sentence naming the mistake.

    python tests/test_student_mistakes.py       # the table: each mistake through its whole
                                                # lesson check (-m lessonN), as a student runs it

Read first: tests/explain.py (how a lesson check says what is wrong), exercises/README.md.
"""

import inspect
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

if __name__ == "__main__":      # run as a script: the project's modules sit one folder up
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import model                    # noqa: E402
import readers                  # noqa: E402
import sampling                 # noqa: E402
import test_clip as clip_checks                 # noqa: E402
import test_fast_inference as cache_checks      # noqa: E402
import test_image_tokenizer as lfq_checks       # noqa: E402
import test_model as loss_checks                # noqa: E402
import test_sampling as maskgit_checks          # noqa: E402
import tokenizer                # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Mistake:
    what: str            # the mistake, as a student would make it
    lesson: int
    home: object         # the module that holds the exercise's function
    name: str            # the function (or class) the student writes
    change: tuple        # (text of the project's solution, the student's text); or a whole wrong source
    test: object         # the lesson test that must catch it
    says: str            # a piece of the sentence its failure must show
    given: dict = None   # arguments of a parametrized test


WRONG_MTP = {
    "averaged per row": '''
def mtp_loss(logits, labels):
    rows = [F.cross_entropy(row, wanted, ignore_index=IGNORE) for row, wanted in zip(logits, labels)
            if (wanted != IGNORE).any()]
    return torch.stack(rows).mean()
''',
    "counting ignored positions": '''
def mtp_loss(logits, labels):
    counted = labels != IGNORE
    each = F.cross_entropy(logits.flatten(0, 1), labels.clamp_min(0).flatten(), reduction="none")
    return (each * counted.flatten()).sum() / labels.numel()
''',
    "an empty mean": '''
def mtp_loss(logits, labels):
    if logits.dim() == 3:
        logits = logits[labels != IGNORE]
    return F.cross_entropy(logits, labels[labels != IGNORE])
''',
}

MISTAKES = [
    # lesson 2: the lookup-free quantizer
    Mistake("quantize with torch.sign (0 stays 0)", 2, tokenizer, "LookupFreeQuantizer",
            ("q = torch.where(z > 0, 1.0, -1.0)", "q = torch.sign(z)"),
            lfq_checks.test_a_channel_at_exactly_zero_quantizes_to_minus_one, "torch.sign gives 0 there"),
    Mistake("code ids with channel 0 as the least significant bit", 2, tokenizer, "LookupFreeQuantizer",
            ("powers = 2 ** torch.arange(bits - 1, -1, -1)", "powers = 2 ** torch.arange(bits)"),
            lfq_checks.test_code_ids_read_the_signs_as_binary_channel_0_first, "channel 0 is the MOST significant bit"),
    Mistake("no straight-through estimator", 2, tokenizer, "LookupFreeQuantizer",
            ("q_st = z + (q - z).detach()", "q_st = q"),
            lfq_checks.test_commitment_value_and_its_pull_of_one_minus_beta, "straight-through estimator"),
    Mistake("entropy loss with the wrong sign", 2, tokenizer, "LookupFreeQuantizer",
            ("return per_token - batch", "return batch - per_token"),
            lfq_checks.test_entropy_per_bit_and_per_code_worked_by_hand, "+0.693 the wrong sign"),
    Mistake("entropy in bits instead of nats", 2, tokenizer, "LookupFreeQuantizer",
            ("return per_token - batch", "return (per_token - batch) / math.log(2)"),
            lfq_checks.test_entropy_per_bit_and_per_code_worked_by_hand, "would be bits"),
    Mistake("per-code batch entropy not divided by the bits", 2, tokenizer, "LookupFreeQuantizer",
            ("batch = -(mean_q * mean_q.clamp_min(1e-12).log()).sum() / z.shape[1]",
             "batch = -(mean_q * mean_q.clamp_min(1e-12).log()).sum()"),
            lfq_checks.test_entropy_per_bit_and_per_code_worked_by_hand, "divided by C"),
    Mistake("decoding codes with a reshape instead of the permute", 2, tokenizer, "LookupFreeQuantizer",
            (".view(b, grid, grid, -1).permute(0, 3, 1, 2)", ".reshape(b, -1, grid, grid)"),
            lfq_checks.test_decoding_codes_puts_each_cells_vector_in_its_cell, "a reshape would mix"),
    # lesson 5: the mask-token loss
    Mistake("MTP shifted like NTP", 5, model, "mtp_loss",
            ("return loss_at_targets(logits, labels)", "return loss_at_targets(logits, next_token_targets(labels))"),
            loss_checks.test_mtp_loss_has_no_shift_and_counts_masked_places_only, "predicts its OWN label (no shift)"),
    Mistake("MTP averaged per row", 5, model, "mtp_loss", WRONG_MTP["averaged per row"],
            loss_checks.test_losses_on_targets_only_equal_plain_cross_entropy, "not a mean of per-row means",
            {"loss": "mtp_loss", "shift": 0}),
    Mistake("MTP counting the ignored positions", 5, model, "mtp_loss", WRONG_MTP["counting ignored positions"],
            loss_checks.test_losses_on_targets_only_equal_plain_cross_entropy, "IGNORE not counted",
            {"loss": "mtp_loss", "shift": 0}),
    Mistake("MTP of no target is NaN", 5, model, "mtp_loss", WRONG_MTP["an empty mean"],
            loss_checks.test_a_batch_with_no_target_is_a_loss_of_zero_not_nan, "not the NaN of an empty mean",
            {"loss": "mtp_loss"}),
    # lesson 6: one MaskGIT step
    Mistake("known tokens sampled again", 6, sampling, "maskgit_step",
            ("codes = torch.where(unknown, sampled, tokens - cfg.image_offset)", "codes = sampled"),
            maskgit_checks.test_known_tokens_are_never_masked_again_and_each_step_commits_one, "never sampled again"),
    Mistake("no clamps on how many stay masked", 6, sampling, "maskgit_step",
            ("n_mask = torch.clamp(torch.minimum(unknown.sum(1, keepdim=True) - 1, n_mask), min=1)",
             "n_mask = n_mask.view(1, 1).expand(tokens.shape[0], 1)"),
            maskgit_checks.test_known_tokens_are_never_masked_again_and_each_step_commits_one, "n_mask is clamped"),
    Mistake("re-masking noise scaled by the temperature alone", 6, sampling, "maskgit_step",
            ("noise = remasking_noise(temperature, step, steps)", "noise = temperature"),
            maskgit_checks.test_the_remasking_noise_is_scaled_by_its_schedule_not_by_the_temperature_alone, "remasking_noise("),
    Mistake("the most confident guesses masked again", 6, sampling, "maskgit_step",
            ("remask = confidence < cut_off", "remask = confidence > cut_off"),
            maskgit_checks.test_each_step_commits_the_most_confident_guesses, "expected the confident ones"),
    Mistake("the argmax instead of a sample", 6, sampling, "maskgit_step",
            ("sampled = torch.multinomial(probs.flatten(0, 1), 1, generator=generator).view(tokens.shape)",
             "sampled = probs.argmax(-1)"),
            maskgit_checks.test_each_guess_is_sampled_not_the_argmax, "sample with torch.multinomial"),
    Mistake("the schedule rounded up (Eq. 13) instead of the released floor", 6, sampling, "maskgit_step",
            ("n_mask = torch.floor(n * mask_schedule(r)).long()", "n_mask = torch.ceil(n * mask_schedule(r)).long()"),
            maskgit_checks.test_each_step_leaves_the_scheduled_number_of_masks, "floor(64 * cos"),
    # lesson 7: the KV cache
    Mistake("cached positions restart at 0", 7, sampling, "CachedNextToken",
            ("torch.arange(seen, total, device=ids.device)", "torch.arange(0, total - seen, device=ids.device)"),
            cache_checks.test_mmu_cached_logits_and_greedy_tokens_match_naive, "their own positions length ... L-1",
            {"attention": None}),
    Mistake("the mask over the new columns only", 7, sampling, "CachedNextToken",
            ("allowed = self.mask_rule(ids)[:, seen:]", "allowed = self.mask_rule(ids)[:, seen:, seen:]"),
            cache_checks.test_mmu_cached_logits_and_greedy_tokens_match_naive, "over ALL columns",
            {"attention": None}),
    Mistake("length never advanced", 7, sampling, "CachedNextToken",
            ("        self.length = total\n", ""),
            cache_checks.test_kv_cache_grows_by_one_position_per_generated_token, "set it to ids.shape[1]"),
    # lesson 10: CLIP's pixels
    Mistake("pixels in [-1, 1] instead of CLIP's mean and std", 10, readers, "clip_pixels",
            ("return ((pixels - mean) / std)[None]", "return (pixels * 2 - 1)[None]"),
            clip_checks.test_clip_preprocessing_normalises_per_channel, "MAGVIT's range", {"size": (50, 30)}),
    Mistake("a reshape instead of the permute", 10, readers, "clip_pixels",
            ("torch.from_numpy(crop).permute(2, 0, 1)", "torch.from_numpy(crop).reshape(3, cfg.image_size, -1)"),
            clip_checks.test_clip_preprocessing_normalises_per_channel, "a reshape mixes the channels", {"size": (50, 30)}),
    Mistake("squashed to a square, no crop", 10, readers, "clip_pixels",
            ("image.resize((cfg.resize_to, longer) if width <= height else (longer, cfg.resize_to),",
             "image.resize((cfg.resize_to, cfg.resize_to),"),
            clip_checks.test_clip_preprocessing_resizes_the_shorter_side_and_cuts_the_centre, "squashing the picture",
            {"landscape": True}),
    Mistake("bilinear instead of bicubic", 10, readers, "clip_pixels",
            ("Image.Resampling.BICUBIC", "Image.Resampling.BILINEAR"),
            clip_checks.test_clip_preprocessing_rounds_the_longer_side_down, "BILINEAR resize"),
    Mistake("the longer side rounded instead of floored", 10, readers, "clip_pixels",
            ("longer = int(", "longer = round("),
            clip_checks.test_clip_preprocessing_rounds_the_longer_side_down, "rounded down"),
]


def wrong_version(mistake):
    """The student's wrong function or class: the project's solution with the mistake made."""
    if isinstance(mistake.change, str):
        source = mistake.change
    else:
        source = textwrap.dedent(inspect.getsource(getattr(mistake.home, mistake.name)))
        old, new = mistake.change
        assert source.count(old) == 1, f"{mistake.what}: {old!r} is not (once) in {mistake.name}"
        source = source.replace(old, new)
    namespace = dict(vars(mistake.home))
    exec(compile(source, f"<{mistake.name}: {mistake.what}>", "exec"), namespace)
    return source, namespace[mistake.name]


def swap_everywhere(monkeypatch, original, replacement):
    """Every module's name for `original` (project and test modules) now means `replacement`."""
    for module in list(sys.modules.values()):
        for attribute, value in list(getattr(module, "__dict__", {}).items()):
            if value is original:
                monkeypatch.setattr(module, attribute, replacement)


@pytest.mark.parametrize("mistake", MISTAKES, ids=[m.what for m in MISTAKES])
def test_each_students_mistake_fails_its_lesson_check_with_a_message_naming_it(mistake, request, monkeypatch):
    _, wrong = wrong_version(mistake)
    swap_everywhere(monkeypatch, getattr(mistake.home, mistake.name), wrong)
    given = dict(mistake.given or {})
    if "loss" in given:
        given["loss"] = wrong
    arguments = {name: given[name] if name in given else request.getfixturevalue(name)
                 for name in inspect.signature(mistake.test).parameters}
    with pytest.raises(AssertionError) as failure:
        mistake.test(**arguments)
    message = str(failure.value).splitlines()[0]
    assert mistake.says in message, f"{mistake.what}: caught, but its message does not name it: {message}"


def through_the_lesson_check(mistake, folder):
    """(caught, first failure line) of `pytest -m lessonN` with the wrong version as SHOWO_EXERCISE."""
    source, _ = wrong_version(mistake)
    student = Path(folder) / "mine.py"
    header = f"import math\nimport torch\nimport torch.nn.functional as F\nfrom {mistake.home.__name__} import *\n"
    student.write_text(header + source)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                             "-m", f"lesson{mistake.lesson}"], cwd=ROOT, capture_output=True, text=True,
                            env={**__import__("os").environ, "SHOWO_EXERCISE": str(student)})
    errors = [line[2:].strip() for line in result.stdout.splitlines() if line.startswith("E ")]
    return result.returncode != 0, re.sub(r"\s+", " ", errors[0]) if errors else result.stdout[-200:]


if __name__ == "__main__":
    import tempfile
    print("| lesson | the student's mistake | caught by `-m lessonN` | the first line the student reads |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for mistake in MISTAKES:
            caught, line = through_the_lesson_check(mistake, folder)
            print(f"| {mistake.lesson} | {mistake.what} | {'yes' if caught else 'NO'} | {line[:400]} |", flush=True)

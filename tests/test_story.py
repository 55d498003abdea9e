"""Stories: mixed-modality generation (data.py stories, attention.story_sequence and its mask,
train.MixedBatches.story, stories.generate_stories, evaluate.story_scores, sampling.py --story).
"""

import random

import numpy as np
import pytest
import torch

import cli
import commands
import data
import sampling
import stories
import train
from model import IGNORE, Showo, ShowoConfig
from stories import sentence_slots, story_attention_mask, story_sequence
from tokenizer import ImageTokenizer

pytestmark = pytest.mark.lesson9   # COURSE.md: `python -m pytest -q -m lesson9` checks that lesson's exercise

RED_CIRCLE = frozenset({("red", "circle", "top left")})


# ---- the world's stories (data.py) ---------------------------------------------------------

def test_generated_stories_follow_their_sentences_frame_by_frame():
    made = stories.make_stories(300, seed=3)
    assert {len(s.sentences) for s in made} == {2, 3, 4}
    changes = {next(c for c, p in stories.CHANGE_PATTERNS.items() if p.fullmatch(s)) for st in made
               for s in st.sentences[1:]}
    assert changes == set(stories.CHANGES)
    for story in made:
        assert all(valid and right for valid, right in stories.check_story(story.images, story.sentences))


@pytest.mark.parametrize("sentence, after", [
    ("the red circle moves to the bottom right", {("red", "circle", "bottom right")}),
    ("the red circle turns blue", {("blue", "circle", "top left")}),
    ("a blue square appears at the top right", {("red", "circle", "top left"), ("blue", "square", "top right")}),
])
def test_apply_change(sentence, after):
    assert stories.apply_change(RED_CIRCLE, sentence) == after


@pytest.mark.parametrize("sentence, why", [
    ("the red circle moves to the top left", "already there"),
    ("the red circle turns red", "already red"),
    ("the blue circle turns red", "no blue circle"),
    ("the red circle disappears", "one or two objects"),          # a frame is never empty
    ("a red circle appears at the top right", "already is"),
    ("a blue square appears at the top left", "two different grid cells"),
    ("the red circle jumps", "not a change sentence"),
])
def test_apply_change_refuses_what_cannot_happen(sentence, why):
    with pytest.raises(ValueError, match=why):
        stories.apply_change(RED_CIRCLE, sentence)


def test_a_change_leaves_the_rest_of_the_picture_alone():
    for story in stories.make_stories(50, seed=4):
        for before, after, sentence in zip(story.images, story.images[1:], story.sentences[1:]):
            lit_before, lit_after = before.max(axis=2) > 0, after.max(axis=2) > 0
            if sentence.startswith("a "):             # "... appears ...": only adds pixels
                assert (after[lit_before] == before[lit_before]).all()
            if "turns" in sentence:                   # the same pixels lit, one object's colour changed
                assert (lit_before == lit_after).all()


def test_a_moved_object_keeps_its_drawing_translated():
    """A move is a translation (stories.realise): the moved object's 16x16 box holds the same
    pixels in its new place, so a window-local image tokenizer gives it the same codes there."""
    def box(picture, place):
        left, top = data.PLACES[place].left, data.PLACES[place].top
        return picture[top:top + data.CELL_SIZE, left:left + data.CELL_SIZE]
    moves = 0
    for story in stories.make_stories(100, seed=5):
        for scenes, pictures, sentence in zip(zip(story.scenes, story.scenes[1:]),
                                              zip(story.images, story.images[1:]), story.sentences[1:]):
            if " moves " not in sentence:
                continue
            [old] = [o for o in scenes[0] if sentence.startswith(f"the {o.colour} {o.shape} ")]
            [new] = [o for o in scenes[1] if (o.colour, o.shape) == (old.colour, old.shape)]
            assert (box(pictures[1], new.place) == box(pictures[0], old.place)).all(), \
                f"{sentence!r}: the moved object was drawn anew, not translated (stories.realise)"
            moves += 1
    assert moves > 20


def test_the_preset_tokenizer_draws_every_move_as_a_copy_of_codes():
    """With the story preset's window-local image tokenizer (untrained weights will do: the
    point is which pixels a code sees), a moved object's codes are its old codes, translated,
    for moves to and from the centre as well: every place's box starts on the 8-pixel
    lattice of its windows. A 16-pixel window would split the centre box in four."""
    vq = ImageTokenizer(train.image_tokenizer_config(train.PRESETS["story"], data.IMAGE_SIZE)).eval()
    code = vq.cfg.downsample                                     # pixels a side per code
    side = data.CELL_SIZE // code                                # codes a side of a place's box

    def box_codes(codes, obj):                                   # (side, side) codes of obj's place
        top, left = data.PLACES[obj.place].top // code, data.PLACES[obj.place].left // code
        return codes[top:top + side, left:left + side]

    centre_moves = 0
    for story in stories.make_stories(60, seed=7):
        grid = data.IMAGE_SIZE // code
        codes = vq.encode(data.pictures_to_tensor(story.images, data.IMAGE_SIZE)).view(-1, grid, grid)
        for k, sentence in enumerate(story.sentences[1:]):
            if " moves " not in sentence:
                continue
            [old] = [o for o in story.scenes[k] if sentence.startswith(f"the {o.colour} {o.shape} ")]
            [new] = [o for o in story.scenes[k + 1] if (o.colour, o.shape) == (old.colour, old.shape)]
            assert torch.equal(box_codes(codes[k], old), box_codes(codes[k + 1], new)), \
                f"{sentence!r}: the moved object's codes changed (is the story preset's vq_local_window 8?)"
            centre_moves += "center" in (old.place, new.place)
    assert centre_moves > 5, centre_moves


def test_the_scorer_catches_a_wrong_frame_and_a_false_sentence():
    story = stories.random_story(random.Random(5), frames=3)
    good = stories.check_story(story.images, story.sentences)
    assert all(right for _, right in good)
    # frame 2 shown again as frame 3: the third sentence's change did not happen
    stuck = stories.check_story(np.stack([story.images[0], story.images[1], story.images[1]]), story.sentences)
    assert [right for _, right in stuck] == [True, True, False]
    # a change that cannot happen (no red circle, or one already red) is not valid, nor its frame right
    wrong = story.sentences[:2] + ["the red circle turns red"]
    assert stories.check_story(story.images, wrong)[2] == (False, False)


# ---- layout and mask (attention.py) ---------------------------------------------------------

CFG = ShowoConfig(llm_vocab_size=30, codebook_size=16, vocab_size=30 + 10 + 16 + 1, bos_token_id=0, eos_token_id=0,
                  num_vq_tokens=4, max_text_len=6, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


def test_every_frame_starts_at_the_same_place_whatever_its_sentences():
    frame = [CFG.image_offset + 1] * CFG.num_vq_tokens
    short = story_sequence([[5], [6]], [frame, frame], CFG)
    long = story_sequence([[5, 7, 8], [6, 6, 6, 6]], [frame, frame], CFG)
    assert len(short) == len(long) == 1 + 2 * (CFG.max_text_len + CFG.num_vq_tokens + 2)
    assert [i for i, t in enumerate(short) if t == CFG.soi_id] == [i for i, t in enumerate(long) if t == CFG.soi_id]
    assert sentence_slots([1] * 20, CFG)[-1] == CFG.eos_token_id          # too long: cut, still ended


def test_the_story_mask_hides_later_frames_and_shows_earlier_ones_whole():
    frame = [CFG.image_offset + 1] * CFG.num_vq_tokens
    ids = torch.tensor([story_sequence([[5], [6], [7]], [frame] * 3, CFG)])
    allowed = story_attention_mask(ids, CFG.pad_id, CFG.soi_id, CFG.eoi_id)[0]
    frames = (ids[0] == CFG.soi_id).nonzero().flatten().tolist()
    span = CFG.num_vq_tokens + 2
    first, second = range(frames[0], frames[0] + span), range(frames[1], frames[1] + span)
    second_sentence = range(frames[0] + span, frames[1])
    real = (ids[0] != CFG.pad_id).tolist()
    assert all(allowed[r, c] for r in second for c in first)                 # frame 2 sees frame 1 whole
    assert all(allowed[r, c] for r in first for c in first)                  # ... and itself both ways
    assert not any(allowed[r, c] for r in first for c in second)             # never a later frame
    assert all(allowed[r, c] for r in second_sentence if real[r] for c in first)
    assert not any(allowed[r, c] for r in range(len(real)) if real[r] for c in range(len(real)) if not real[c])


# ---- training rows (train.MixedBatches.story) -----------------------------------------------

def story_batches(n_stories=4):
    tc = cli.override(train.PRESETS["micro"], ["batch_story=6", "train_stories=4"])
    rows = [([[5, 6], [7], [8, 9, 10]], torch.arange(12).view(3, 4) % 16)] * n_stories
    return train.MixedBatches(CFG, tc, torch.zeros(1, 4, dtype=torch.long), [[1]], [[([1], [2])]], [[1]], rows)


def test_a_story_row_ends_with_the_frame_it_trains_and_labels_both_objectives():
    batches, rng, gen = story_batches(), random.Random(0), torch.Generator().manual_seed(0)
    parts = [batches.story(rng, gen) for _ in range(12)]
    rows = [row for part in parts for row in zip(part.ids.tolist(), part.labels, stories.story_targets(part.labels, part.mtp_positions),
                                                 part.mtp_positions, part.changed)]
    stride = CFG.max_text_len + CFG.num_vq_tokens + 2                         # a sentence's slots and a frame
    for ids, labels, target, mtp, changed in rows:
        end = max(i for i, t in enumerate(ids) if t != CFG.pad_id)           # the row's last real token
        masked = [i for i, t in enumerate(ids) if t == CFG.mask_token_id]
        assert masked and ids[end] == CFG.eoi_id                             # the masked frame is the last thing
        assert ids.count(CFG.mask_token_id) == int(mtp.sum())
        assert max(masked) < end and min(masked) >= end - CFG.num_vq_tokens
        # MTP: a masked place predicts its own code; NTP: a sentence position predicts the next word
        for i in masked:
            assert target[i] == labels[i] >= CFG.image_offset
            # changed: the masked codes that differ from the same place of the frame before (none in frame 1)
            assert changed[i] == (len(ids) > 1 + stride and labels[i] != ids[i - stride]), \
                "story_rows' changed must mark exactly the masked codes the frame before does not have"
        assert not (changed & ~mtp).any()
        words = [i for i in range(end) if target[i] != IGNORE and not mtp[i]]
        assert all(target[i] == ids[i + 1] and ids[i + 1] < CFG.llm_vocab_size for i in words)
        told = ids[2] != CFG.eos_token_id                                    # BOS EOS: every sentence dropped
        assert bool(words) == told
    assert {len(part.ids[0]) for part in parts} == {1 + k * (CFG.max_text_len + 6) for k in (1, 2, 3)}
    assert any(changed.any() for *_, changed in rows)
    told = [ids[2] != CFG.eos_token_id for ids, _, _, _, _ in rows]
    assert 0 < told.count(False) < len(rows) / 4                             # caption_dropout's share, untold


def test_a_story_run_learns_language_from_its_change_sentences():
    """commands.plain_texts: a story run's plain-text rows are its stories' change sentences
    (the writer's rules, cheaply: lever 9); a run without stories keeps the world's sentences."""
    told = stories.make_stories(6, seed=0)
    texts = commands.plain_texts(["what color is the circle? red"], told)
    assert texts == [sentence for story in told for sentence in story.sentences[1:]], \
        "a story run's plain text must be every change sentence of its stories, openings left out"
    assert all(any(p.fullmatch(t) for p in stories.CHANGE_PATTERNS.values()) for t in texts), texts
    assert commands.plain_texts(["what color is the circle? red"], ()) == ["what color is the circle? red"]


def test_the_changes_loss_is_mtp_on_the_changed_tokens_alone():
    """story_losses' "story changes": cross-entropy averaged over the changed masked tokens
    only (logits given at every target, in row-major order, as training gives them)."""
    torch.manual_seed(0)
    labels = torch.full((2, 6), IGNORE)
    labels[:, 1:4] = torch.tensor([[70, 71, 72], [73, 74, 75]])               # masked frame tokens
    labels[0, 5] = 9                                                           # a word (NTP target at 4)
    frame = labels >= 70
    changed = torch.zeros_like(frame)
    changed[0, 2] = changed[1, 1] = changed[1, 3] = True
    targets = stories.story_targets(labels, frame) != IGNORE
    logits = torch.randn(int(targets.sum()), 80)
    # targets in row-major order: row 0 at 1, 2, 3 (frame) and 4 (the word), row 1 at 1, 2, 3
    expected = torch.nn.functional.cross_entropy(logits[[1, 4, 6]], torch.tensor([71, 73, 75]))
    got = stories.story_losses(logits, labels, frame, changed)["story changes"]
    assert torch.allclose(got, expected), \
        f"story changes = {got.item():.4f}, MTP on the changed tokens = {expected.item():.4f}"


def test_the_story_loss_splits_into_its_two_objectives_and_drops():
    torch.manual_seed(0)
    batches = story_batches()
    model = Showo(CFG)
    tc = batches.tc
    forward = train.MixedForward(model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = []
    for step in range(60):
        parts = {"story": batches.batch(step)["story"]}
        loss, losses = train.mixed_loss(forward, parts, tc, "cpu")
        history.append(losses)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert set(losses) == {"story frames", "story text", "story changes"}
    for kind in ("story frames", "story text"):
        first, last = (np.mean([h[kind] for h in part]) for part in (history[:5], history[-5:]))
        assert last < 0.65 * first, (kind, first, last)


# ---- generating in turn (stories.generate_stories) ----------------------------------------

@pytest.mark.parametrize("given_first_frame", [False, True])
def test_cached_and_naive_stories_give_the_same_tokens(given_first_frame):
    torch.manual_seed(1)
    model = Showo(CFG).eval()
    first = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]]) if given_first_frame else None
    runs = []
    for naive in (False, True):
        generator = torch.Generator().manual_seed(7)
        settings = {"steps": 3, "guidance": 1.5, "temperature": 1.0, "code_temperature": 1.0}
        runs.append(stories.generate_stories(model, [[5, 6], [7]], 3, settings, generator, first, naive=naive))
    (codes, words), (naive_codes, naive_words) = runs
    assert codes.shape == (2, 3, 4) and torch.equal(codes, naive_codes) and words == naive_words
    assert len(words) == 2 and all(len(sentences) == 2 for sentences in words)
    if given_first_frame:
        assert torch.equal(codes[:, 0], first)


def test_a_story_frame_is_drawn_with_guidance(monkeypatch):
    """One MaskGIT step by hand: the told and the untold story through the full network,
    guided (Eq. 12), then maskgit_step with the same random numbers."""
    torch.manual_seed(2)
    model = Showo(CFG).eval()
    settings = {"steps": 1, "guidance": 2.0, "temperature": 1.0, "code_temperature": 1.0}
    prompt = torch.tensor([story_sequence([[5, 6]], [], CFG), story_sequence([[]], [], CFG)])
    seen = []                               # the logits the MaskGIT loop is given for the blank frame
    real_maskgit = stories.maskgit
    monkeypatch.setattr(stories, "maskgit", lambda frame_logits, tokens, *rest, **named: seen.append(
        frame_logits(tokens)) or real_maskgit(frame_logits, tokens, *rest, **named))
    codes = stories.draw_frame(stories.StorySoFar(model, prompt), settings, torch.Generator().manual_seed(3))
    blank = [CFG.mask_token_id] * CFG.num_vq_tokens
    ids = torch.tensor([story_sequence([[5, 6]], [blank], CFG), story_sequence([[]], [blank], CFG)])
    with torch.no_grad():
        logits = model(ids, story_attention_mask(ids, CFG.pad_id, CFG.soi_id, CFG.eoi_id))
    image = logits[:, -(CFG.num_vq_tokens + 1):-1, CFG.image_offset:CFG.image_offset + CFG.codebook_size]
    guided = sampling.guide(image[:1], image[1:], 2.0)
    assert torch.allclose(seen[0], guided, atol=1e-4), ("a story frame must be drawn from the guided logits "
                                                        "(1 + w) cond - w uncond of the told and the untold story")
    expected, _ = sampling.maskgit_step(torch.tensor([blank]), guided, 0, 1, CFG, 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(codes, expected)


def test_the_cache_never_runs_a_token_twice():
    """Count the token-rows the network runs: cached = the story once, plus each MaskGIT step's frame."""
    torch.manual_seed(1)
    model = Showo(CFG).eval()
    rows = []
    model.blocks[0].register_forward_hook(lambda module, inputs, output: rows.append(inputs[0].shape[1]))
    steps, frames = 3, 3
    settings = {"steps": steps, "guidance": 0, "temperature": 1.0, "code_temperature": 1.0}
    codes, _ = stories.generate_stories(model, [[5, 6]], frames, settings, torch.Generator().manual_seed(0))
    story_length = 1 + frames * (CFG.max_text_len + CFG.num_vq_tokens + 2) - (CFG.num_vq_tokens + 2)
    frame = CFG.num_vq_tokens + 2
    # every token of the story (all but the last frame) once, and each step's frame against the cache
    assert sum(rows) == story_length + frames * steps * frame


def test_every_finished_frame_joins_the_story(monkeypatch):
    """What the story holds once written: its tokens up to the last frame, every earlier
    frame included, so each sentence is written after (and about) the frame before it."""
    torch.manual_seed(1)
    held = []
    real_append = stories.StorySoFar.append
    monkeypatch.setattr(stories.StorySoFar, "append", lambda self, new: held.append(new.shape[1]) or
                        real_append(self, new))
    frames = 3
    settings = {"steps": 2, "guidance": 0, "temperature": 1.0, "code_temperature": 1.0}
    stories.generate_stories(Showo(CFG).eval(), [[5, 6]], frames, settings, torch.Generator().manual_seed(0))
    story_length = 1 + frames * (CFG.max_text_len + CFG.num_vq_tokens + 2) - (CFG.num_vq_tokens + 2)
    assert sum(held) == story_length, (f"the story holds {sum(held)} tokens after {frames} frames, expected "
                                       f"{story_length}: a finished frame must join the story (append), not only "
                                       f"be looked at (peek)")


# ---- the command line: python sampling.py --story ... ---------------------------------------

@pytest.fixture(scope="module")
def story_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("story")
    train.main(["--preset", "micro", "--steps", "3", "--no-eval", "--set", "batch_story=2", "--set", "train_stories=8",
                "--set", "vq_local_window=8", "--out-dir", str(root)])           # the story preset's kind of tokenizer
    return root / "micro.pt"


def test_story_writes_the_strip_the_frames_and_the_sentences(story_checkpoint, tmp_path, capsys):
    from PIL import Image

    out, folder = tmp_path / "story.png", tmp_path / "frames"
    sampling.main(["--ckpt", str(story_checkpoint), "--story", "a red circle\nat the  top left", "--frames", "3",
                   "--out", str(out), "--out-dir", str(folder)])
    lines = (folder / "story.txt").read_text().splitlines()     # one sentence a line, whatever the spacing given
    assert len(lines) == 3 and lines[0] == "a red circle at the top left", lines
    frames = [np.asarray(Image.open(folder / f"frame_{k}.png")) for k in (1, 2, 3)]
    assert all(frame.shape == (32, 32, 3) for frame in frames)
    strip = np.asarray(Image.open(out).convert("RGB"))
    cell = strip.shape[1] // 3
    for k, frame in enumerate(frames):          # frame k, enlarged 4x, sits in the k-th cell of the strip
        left = k * cell + (cell - 128) // 2
        assert (strip[4:4 + 128:4, left:left + 128:4] == frame).all()
    assert "1. a red circle at the top left" in capsys.readouterr().out


def test_a_story_from_a_given_first_frame_keeps_it(story_checkpoint, tmp_path):
    from PIL import Image

    from checkpoint import load_checkpoint

    start = data.make_examples(1, seed=2)[0].image
    Image.fromarray(start).save(tmp_path / "start.png")
    sampling.main(["--ckpt", str(story_checkpoint), "--story", data.make_examples(1, seed=2)[0].caption,
                   "--image", str(tmp_path / "start.png"), "--frames", "2", "--out-dir", str(tmp_path / "s"),
                   "--out", str(tmp_path / "s.png")])
    _, vq, _, _ = load_checkpoint(story_checkpoint)
    rebuilt = data.decode_codes(vq, data.encode_pictures(vq, start[None], "cpu"))[0]
    assert (np.asarray(Image.open(tmp_path / "s" / "frame_1.png")) == rebuilt).all()


def test_the_stories_shown_are_the_first_scored_ones(story_checkpoint, tmp_path, capsys):
    """`python evaluate.py stories` shows the first stories story_scores scores: the same
    draws (same generator, same batches), none picked."""
    import evaluate
    from checkpoint import load_checkpoint

    model, vq, text_tokenizer, extra = load_checkpoint(story_checkpoint)
    scoring = evaluate.scoring_of_checkpoint(extra)
    every = stories.scored_stories(model, vq, text_tokenizer, scoring)
    assert len(every) == 90 and all(len(sentences) == scoring.story_frames for _, sentences, _ in every)
    first = stories.scored_stories(model, vq, text_tokenizer, scoring, first=2)
    assert all(np.array_equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(first, every[:2])) and len(first) == 2, \
        "the first stories must be drawn exactly as the scored set draws them"
    evaluate.main(["stories", "--ckpt", str(story_checkpoint), "--count", "2", "--png", str(tmp_path / "s.png")])
    printed = capsys.readouterr().out.splitlines()
    for number, (_, sentences, results) in enumerate(every[:2], 1):
        marks = ["right" if right else "invalid" if not valid else "wrong" for valid, right in results]
        assert printed[number - 1] == f"story {number}: " + " / ".join(
            f"{' '.join(sentence.split())} ({mark})" for sentence, mark in zip(sentences, marks)), printed
    assert (tmp_path / "s.png").exists()

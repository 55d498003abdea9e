"""Stories: Show-o writes a sentence, draws its frame, writes the next, ... (mixed-modality generation).

Show-o (arXiv 2408.12528v7, §1 "Introduction", and the mixed-modality results of §4
"Experiments") writes text and draws pictures in turn with the same network. The released
code never shipped it; this file builds it from the core's parts, as one opt-in read:

1. the data: shapes-world stories whose frames change one thing at a time, and the
   scorer that checks a drawn story frame by frame (`check_story`);
2. the layout and its mask: <|t2v|>, then a sentence in fixed slots and its frame, and
   again; the mask is the one omni-attention rule (attention.omni_attention_mask) with
   each frame a bidirectional block;
3. training rows: a story cut after the frame being drawn, both objectives in one row
   (model.mtp_loss on that frame, model.ntp_loss on the sentences);
4. generation: one KV cache for the whole story, frames drawn by sampling.maskgit and
   sentences written by sampling.decode_tokens;
5. scores: `story_scores`, what `train.py --preset story` reports, over `scored_stories`,
   and `change_scores` (frame 2 drawn from a given sentence, by kind of change).

`python sampling.py --ckpt assets/story.pt --story "a white circle at the top right"`
tells one (commands.tell). docs/experiments.md, "Stories", has what was measured.

Read first: sampling.py and data.py. Read next: readers.py (the other extension).
"""

import random
import re
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from attention import omni_attention_mask, picture_blocks
from data import (COLOURS, GRID_PLACES, MAX_OBJECT_SIZE, MIN_OBJECT_SIZE, PHRASE_TO_PLACE, PLACES, SHAPES,
                  ShapeObject, as_world_picture, canonical_order, caption, corner_range, decode_codes, encode_pictures,
                  find_objects, one_object_captions, parse_caption, random_scene, render)
from model import IGNORE, mtp_loss, next_token_targets, ntp_loss, random_masks
from sampling import check_image_codes, decode_tokens, guide, maskgit, with_unconditional


# ----------------------------------------------------------------------------------------
# 1. The data: frames that change one thing at a time
# ----------------------------------------------------------------------------------------
#
# Show-o (arXiv 2408.12528v7, §1 "Introduction" and §4 "Experiments", the mixed-modality
# results) writes text and draws pictures in turn. Here a story is two to four frames,
# each with a sentence. The first sentence is the first frame's caption; every later
# sentence says the ONE thing that changes from the frame before:
#
#     "a red circle at the top left"      (frame 1)
#     "the red circle moves to the bottom right"
#     "a blue square appears at the top left"
#     "the red circle turns green"        (or "... disappears")
#
# The world's rules still hold in every frame (one or two objects; two objects in two
# different grid cells; "center" only for a lone object). Two objects are also never the
# same kind (colour and shape), so "the red circle" always names one object. A scene is
# written here as a set of (colour, shape, place), what `describe` reads from pixels, so
# the scorer can apply a sentence to the frame the model actually drew.

STORY_FRAMES = (2, 4)     # a training story has this many frames, both ends included
STORY_FRAMES_SCORED = 3   # a scored story: the opening's frame and two more
CHANGES = ("move", "recolour", "appear", "disappear")

_KIND = "({}) ({})".format("|".join(COLOURS), "|".join(SHAPES))
_PLACE_PHRASE = "|".join(re.escape(place.phrase) for place in PLACES.values())
CHANGE_PATTERNS = {
    "move": re.compile(f"the {_KIND} moves to the ({'|'.join(PLACES)})"),
    "recolour": re.compile(f"the {_KIND} turns ({'|'.join(COLOURS)})"),
    "appear": re.compile(f"a {_KIND} appears ({_PLACE_PHRASE})"),
    "disappear": re.compile(f"the {_KIND} disappears"),
}


def change_sentence(change, colour, shape, value=None):
    """The sentence of a change, e.g. ("move", "red", "circle", "top right") ->
    'the red circle moves to the top right'. value: the new place (move, appear) or the
    new colour (recolour); none for disappear."""
    if change == "move":
        return f"the {colour} {shape} moves to the {value}"
    if change == "recolour":
        return f"the {colour} {shape} turns {value}"
    if change == "appear":
        return f"a {colour} {shape} appears {PLACES[value].phrase}"
    if change == "disappear":
        return f"the {colour} {shape} disappears"
    raise ValueError(f"unknown change {change!r}; expected one of {CHANGES}")


def check_scene(scene):
    """ValueError unless a set of (colour, shape, place) is a possible frame of a story."""
    places = [place for _, _, place in scene]
    kinds = {(colour, shape) for colour, shape, _ in scene}
    if not 1 <= len(scene) <= 2:
        raise ValueError(f"a frame holds one or two objects, not {len(scene)}")
    if len(scene) == 2 and (len(set(places)) < 2 or "center" in places):
        raise ValueError("two objects need two different grid cells, never the center")
    if len(kinds) < len(scene):
        raise ValueError("two objects of the same colour and shape could not be told apart")


def apply_change(scene, sentence):
    """The scene after one change sentence: a set of (colour, shape, place) -> a new set.

    ValueError when the sentence is not a change sentence, names an object that is not in
    the scene, changes nothing (a move to the same place, a colour it already has), or
    would break the world's rules (check_scene)."""
    sentence = sentence.strip()
    for change, pattern in CHANGE_PATTERNS.items():
        match = pattern.fullmatch(sentence)
        if match:
            break
    else:
        raise ValueError(f"not a change sentence: {sentence!r}; expected e.g. "
                         "'the red circle moves to the top right'")
    colour, shape, value = (*match.groups(), None)[:3]
    named = [obj for obj in scene if obj[:2] == (colour, shape)]
    if change == "appear":
        if named:
            raise ValueError(f"{sentence!r}: there already is a {colour} {shape}")
        new = set(scene) | {(colour, shape, PHRASE_TO_PLACE[value])}
    else:
        if not named:
            raise ValueError(f"{sentence!r}: there is no {colour} {shape} in the frame")
        [(_, _, place)] = named
        rest = set(scene) - set(named)
        if change == "disappear":
            new = rest
        elif change == "move":
            if value == place:
                raise ValueError(f"{sentence!r}: it is already there")
            new = rest | {(colour, shape, value)}
        else:
            if value == colour:
                raise ValueError(f"{sentence!r}: it is already {colour}")
            new = rest | {(value, shape, place)}
    check_scene(new)
    return frozenset(new)


def possible_changes(scene):
    """Every change sentence that applies to a scene, grouped by kind of change: {change: [sentence]}."""
    candidates = {
        "move": [change_sentence("move", c, s, place) for c, s, _ in scene for place in PLACES],
        "recolour": [change_sentence("recolour", c, s, colour) for c, s, _ in scene for colour in COLOURS],
        "appear": [change_sentence("appear", c, s, place) for c in COLOURS for s in SHAPES for place in GRID_PLACES],
        "disappear": [change_sentence("disappear", c, s) for c, s, _ in scene],
    }
    possible = {}
    for change, sentences in candidates.items():
        for sentence in sentences:
            try:
                apply_change(scene, sentence)
            except ValueError:
                continue
            possible.setdefault(change, []).append(sentence)
    return possible


def scene_kinds(objects) -> frozenset[tuple[str, str, str]]:
    """A scene of ShapeObjects as the set of (colour, shape, place) that describe() reads."""
    return frozenset((obj.colour, obj.shape, obj.place) for obj in objects)


def realise(previous, scene, rng: random.Random) -> list[ShapeObject]:
    """ShapeObjects for a new scene (a set of (colour, shape, place)) that keep the previous
    frame's drawing wherever they can: an unchanged object keeps its pixels, a recoloured
    one its box, a moved one its size and its offset inside its 16x16 box (the same
    drawing, translated); only a new object gets a fresh random box in its cell.

    Why translate: with a window-local image tokenizer (tokenizer.py, local_window = 8) a
    code depends on its own 8x8 window of pixels only, and every place's box (the grid
    cells and the centre) starts on that 8-pixel lattice, so a moved object, to or from the
    centre too, has exactly the codes it had: drawing the move is copying them."""
    objects = []
    for colour, shape, place in scene:
        same = [o for o in previous if (o.colour, o.shape, o.place) == (colour, shape, place)]
        recoloured = [o for o in previous if (o.shape, o.place) == (shape, place)]
        moved = [o for o in previous if (o.colour, o.shape) == (colour, shape)]
        if same or recoloured:
            old = (same or recoloured)[0]
            objects.append(ShapeObject(colour, shape, place, old.x, old.y, old.size))
        elif moved:
            old, source, target = moved[0], PLACES[moved[0].place], PLACES[place]
            objects.append(ShapeObject(colour, shape, place, old.x - source.left + target.left,
                                       old.y - source.top + target.top, old.size))
        else:
            size = rng.randint(MIN_OBJECT_SIZE, MAX_OBJECT_SIZE)
            xs, ys = corner_range(place, size)
            objects.append(ShapeObject(colour, shape, place, rng.choice(xs), rng.choice(ys), size))
    return canonical_order(objects)


@dataclass
class Story:
    """A story: its frames' scenes, their pictures and one sentence per frame."""
    scenes: list[list[ShapeObject]]
    images: np.ndarray                # (F, 32, 32, 3) uint8
    sentences: list[str]              # the first frame's caption, then one change per frame


def random_story(rng: random.Random, frames: int | None = None) -> Story:
    """A random story of `frames` frames (None: 2 to 4, with equal chance).

    The first scene is a random one whose objects are different kinds; each next frame
    applies one change, its kind (move, recolour, appear, disappear) drawn with equal
    chance among those that are possible, then the sentence among that kind's."""
    frames = frames or rng.randint(*STORY_FRAMES)
    scene = random_scene(rng)
    while len({(o.colour, o.shape) for o in scene}) < len(scene):
        scene = random_scene(rng)
    scenes, sentences = [scene], [caption(scene)]
    for _ in range(frames - 1):
        options = possible_changes(scene_kinds(scene))
        sentence = rng.choice(options[rng.choice(sorted(options))])
        scene = realise(scene, apply_change(scene_kinds(scene), sentence), rng)
        scenes.append(scene)
        sentences.append(sentence)
    return Story(scenes, np.stack([render(s) for s in scenes]), sentences)


def make_stories(n: int, seed: int, frames: int | None = None) -> list[Story]:
    """n random stories; the same seed always gives the same list."""
    rng = random.Random(seed)
    return [random_story(rng, frames) for _ in range(n)]


def check_story(images, sentences) -> list[tuple[bool, bool]]:
    """Score a drawn story, frame by frame: [(sentence valid, frame right), ...].

    Frame 1 is right when describe() reads exactly its sentence (a caption). For each
    later frame, the sentence is valid when it is a change that can happen to the PREVIOUS
    frame as drawn (read by describe), and the frame is right when it shows exactly that
    frame with that change applied: the change happened, and nothing else changed. A
    frame whose sentence is not valid is not right."""
    results, previous = [], None
    for k, (image, sentence) in enumerate(zip(images, sentences)):
        found = find_objects(image)
        seen = frozenset(found) if len(found) == len(set(found)) else None   # None: a duplicate object
        try:
            wanted = parse_caption(sentence) if k == 0 else apply_change(previous, sentence)
            valid = True
        except ValueError:
            wanted, valid = None, False
        results.append((valid, valid and seen == wanted))
        previous = seen or frozenset()
    return results


# ----------------------------------------------------------------------------------------
# 2. The layout and its mask
# ----------------------------------------------------------------------------------------

def sentence_slots(text_ids, cfg):
    """One sentence of a story: BOS sentence EOS, RIGHT-padded with [PAD] to max_text_len slots.

    Too long: cut, and end with EOS. Fixed-width slots put every frame of a story at the
    same positions whatever its sentences' lengths, as the t2i text slots do for the one
    picture; right padding (unlike t2i's left) lets a writer append its sentence token by
    token and fill the rest with [PAD] once it ends.
    """
    ids = [cfg.bos_token_id, *text_ids, cfg.eos_token_id]
    if len(ids) > cfg.max_text_len:
        ids = ids[:cfg.max_text_len - 1] + [cfg.eos_token_id]
    return ids + [cfg.pad_id] * (cfg.max_text_len - len(ids))


def story_sequence(sentences_ids, frames_tokens, cfg):
    """A story (mixed-modality generation; docs/sequences.md), one id list:

        <|t2v|>  [BOS s_1 EOS PAD..]  <|soi|> f_1 <|eoi|>  [BOS s_2 EOS PAD..]  <|soi|> f_2 <|eoi|> ...

    sentences_ids: F id lists; frames_tokens: F (N,) lists of image ids (or [MASK]), one
    per sentence, or one fewer (the story stops after a sentence). <|t2v|>, a task token
    the released model never used, marks a story as <|t2i|> marks a picture's caption.
    """
    ids = [cfg.t2v_id]
    for k, sentence in enumerate(sentences_ids):
        ids += sentence_slots(sentence, cfg)
        if k < len(frames_tokens):
            ids += [cfg.soi_id, *frames_tokens[k], cfg.eoi_id]
    return ids



def story_attention_mask(input_ids, pad_id, soi_id, eoi_id):
    """The mask of a story (`story_sequence`), (B, L, L) bool: the general rule with each
    frame, <|soi|> to <|eoi|>, a bidirectional block of its own. A sentence sees every
    earlier frame whole; a frame sees the story before it and itself, never a later frame."""
    return omni_attention_mask(picture_blocks(input_ids, soi_id, eoi_id), input_ids == pad_id)


# ----------------------------------------------------------------------------------------
# 3. Training rows: both objectives in one row
# ----------------------------------------------------------------------------------------

def story_rows(stories, longer_than, count, dropout, cfg, rng, gen):
    """`count` story rows cut after frame k -> (ids, labels, allowed, frame, changed), each (B, L[, L]).

    stories: (sentences' ids, frames' codes (F, N)) per story; longer_than[k]: the stories
    with more than k frames. Labels: every sentence token and EOS (NTP) and frame k's masked
    tokens (MTP), in one row: Show-o's two objectives at once. frame (B, L) bool: the
    positions trained by mask-token prediction (the frame being drawn); changed (B, L) bool:
    those whose code differs from the frame before's (none in frame 1), which `story_losses`
    can weigh apart: the rest of a later frame is a copy.

    Why cut after frame k: at inference every sentence and every frame is written after
    WHOLE earlier frames, so in training nothing may look at a partly masked frame, and
    everything after frame k would. So each row trains one frame; its sentences and
    earlier frames are the context. One k per step (uniform over 1 ... the most frames,
    among the stories that long) gives rows of one length: no padding to compute.
    Sentence drop-out: a `dropout` share of the rows loses EVERY sentence (empty slots, no
    text loss), so the network also learns frames from frames alone, the unconditional
    story that classifier-free guidance needs (`draw_frame`).
    """
    n = cfg.num_vq_tokens
    cut = rng.randrange(len(longer_than))                                 # frame k = cut + 1
    chosen = [stories[rng.choice(longer_than[cut])] for _ in range(count)]
    masked = random_masks(len(chosen), n, gen)                            # (B, N)
    rows, labels, changed = [], [], []
    for (sentences, codes), hidden in zip(chosen, masked):
        if rng.random() < dropout:
            sentences = [[] for _ in sentences]                            # the unconditional story
        tokens = codes[:cut + 1] + cfg.image_offset                        # (k, N)
        drawn = tokens[cut].masked_fill(hidden, cfg.mask_token_id)
        rows.append(story_sequence(sentences[:cut + 1], [*tokens[:cut].tolist(), drawn.tolist()], cfg))
        row_labels = [IGNORE]                                              # <|t2v|>
        for j, sentence in enumerate(sentences[:cut + 1]):
            slots = sentence_slots(sentence, cfg)                          # BOS words EOS [PAD]...
            words = [IGNORE if t == cfg.pad_id or not sentence else t for t in slots[1:]]
            row_labels += [IGNORE] + words
            frame = tokens[cut].masked_fill(~hidden, IGNORE).tolist() if j == cut else [IGNORE] * n
            row_labels += [IGNORE, *frame, IGNORE]                         # <|soi|> frame <|eoi|>
        labels.append(row_labels)
        changed.append(codes[cut] != codes[cut - 1] if cut else torch.zeros(n, dtype=torch.bool))   # (N,)
    ids, labels = torch.tensor(rows), torch.tensor(labels)
    allowed = story_attention_mask(ids, cfg.pad_id, cfg.soi_id, cfg.eoi_id)
    frame = labels >= cfg.image_offset                                     # frame k's masked places
    changed_places = torch.zeros_like(frame)
    changed_places[:, -n - 1:-1] = torch.stack(changed)                    # frame k's N places, before <|eoi|>
    return ids, labels, allowed, frame, frame & changed_places


def story_targets(labels, frame):
    """What each position of a story row predicts (B, L): on the frame being drawn, its own
    token (MTP, no shift); elsewhere the next token (NTP's shift), never a frame token."""
    return torch.where(frame, labels, next_token_targets(labels.masked_fill(frame, IGNORE)))


def story_losses(logits, labels, frame, changed):
    """The losses of story rows: MTP on the frame (Eq. 2), NTP on the sentences (Eq. 1), and
    MTP again on the frame's changed tokens alone (0 where none is masked): a later frame is
    mostly a copy of the one before, so this term sends frame loss to what the sentence
    changed (train.py weighs it by `loss_story_changes`; 0 leaves it out).

    logits (K, V) at the K positions where story_targets has a target, in row-major order.
    """
    targets = story_targets(labels, frame) != IGNORE                                  # (B, L)
    is_frame = frame[targets]                                                         # (K,)
    return {"story frames": mtp_loss(logits[is_frame], labels.masked_fill(~frame, IGNORE)),
            "story text": ntp_loss(logits[~is_frame], labels.masked_fill(frame, IGNORE)),
            "story changes": mtp_loss(logits[changed[targets]], labels.masked_fill(~changed, IGNORE))}


# ----------------------------------------------------------------------------------------
# 4. Generation: one cache for the whole story
# ----------------------------------------------------------------------------------------
#
# Generation alternates sampling.py's two decoding procedures: MaskGIT for a frame,
# next-token sampling for a sentence. Under the story mask (`story_attention_mask`)
# no token ever looks at a LATER one, except inside the frame being drawn, so one KV cache
# serves the whole story:
#   * while a frame is drawn, each MaskGIT step runs only <|soi|> frame <|eoi|> against
#     the cached story before it (`peek`: CachedPromptT2I's prompt cache, generalised);
#   * the finished frame joins the cache in one pass (`append`), with the next sentence's
#     BOS, whose output is the first word's logits;
#   * each word of a sentence joins the cache as it is written (CachedNextToken's way).


class StorySoFar:
    """The (B, L) ids of B stories so far, with every token's keys/values in one cache.

    append(new) runs (B, T) new ids once against the cache; they join the story and their
    keys/values join the cache. peek(new) runs them the same way but leaves the story as it
    was (a frame still being drawn changes at every step). Both return the new tokens'
    hidden states (B, T, D). naive: no cache; every call runs the whole story from its
    first token (the same numbers, slower: tests/test_story.py checks the tokens agree).
    """

    def __init__(self, model, ids, naive=False):
        self.model, self.cfg, self.naive = model, model.cfg, naive
        self.ids, self.past = ids[:, :0], None
        self.append(ids)

    def extended(self, new):
        """(hidden (B, T, D) of the new tokens, the story with them, the cache with them)."""
        full = torch.cat([self.ids, new], dim=1)                          # (B, L + T)
        start = 0 if self.naive else self.ids.shape[1]
        allowed = story_attention_mask(full, self.cfg.pad_id, self.cfg.soi_id, self.cfg.eoi_id)[:, start:]
        positions = torch.arange(start, full.shape[1], device=full.device).expand(full.shape[0], -1)
        hidden, present = self.model.forward_with_cache(full[:, start:], allowed, positions,
                                                        None if self.naive else self.past)
        return hidden[:, -new.shape[1]:], full, present

    def peek(self, new):
        return self.extended(new)[0]

    def append(self, new):
        hidden, self.ids, present = self.extended(new)
        self.past = None if self.naive else present
        return hidden


def draw_frame(story, settings, generator):
    """MaskGIT (sampling.maskgit) for the next frame of B stories, against the cached story
    -> (B, N) codes.

    With guidance w (settings["guidance"]), the story's rows are B stories and then the same
    B without their sentences (generate_stories), and each step's logits are guided
    (1 + w) * told - w * untold (Eq. 12): the frame should follow the WORDS, beyond what
    the earlier frames alone suggest. Training drops every sentence of some rows to teach
    the untold story (`story_rows`)."""
    cfg, w = story.cfg, settings["guidance"]
    off, rows = cfg.image_offset, story.ids.shape[0]
    tokens = torch.full((rows // 2 if w else rows, cfg.num_vq_tokens), cfg.mask_token_id, device=story.ids.device)
    boundary = lambda token_id: torch.full((rows, 1), token_id, device=tokens.device)   # noqa: E731

    def frame_logits(tokens):                                                           # (B, N)
        frame = tokens.repeat(rows // len(tokens), 1)                                   # (rows, N)
        hidden = story.peek(torch.cat([boundary(cfg.soi_id), frame, boundary(cfg.eoi_id)], dim=1))   # (rows, N + 2, D)
        logits = story.model.logits(hidden[:, 1:-1], slice(off, off + cfg.codebook_size))          # (rows, N, K)
        return guide(*logits.chunk(2), w) if w else logits
    return maskgit(frame_logits, tokens, settings["steps"], cfg, settings["temperature"], generator,
                   code_temperature=settings["code_temperature"])


def write_sentence(story, hidden, temperature, generator, silent):
    """The next sentence of the story's rows, sampled word by word (sampling.decode_tokens);
    hidden (rows, D) is the output of its BOS. Returns one id list per row (EOS removed).

    The sentence fills its max_text_len slots: a finished row writes [PAD] (seen by nobody)
    while the others go on, the last slot is always EOS, and the padding that is left joins
    the story in one pass. silent (rows,) bool: rows that write nothing (an empty sentence,
    BOS EOS: the untold stories of guidance)."""
    cfg = story.cfg
    slots = cfg.max_text_len - 1                                          # the slots after BOS
    start = story.ids.shape[1]
    only_eos = torch.full((cfg.llm_vocab_size,), float("-inf"), device=hidden.device)
    only_eos[cfg.eos_token_id] = 0.0

    def next_word_logits(ids):                                            # ids: the story, then the words so far
        written = ids.shape[1] - start
        last = hidden if written == 0 else story.append(ids[:, -1:])[:, -1]          # (rows, D)
        logits = story.model.logits(last, slice(0, cfg.llm_vocab_size))              # (rows, text ids)
        if written == 0:
            logits[silent] = only_eos
        if written == slots - 1:
            logits[:] = only_eos
        return logits
    words = decode_tokens(next_word_logits, story.ids, slots, cfg.eos_token_id, cfg.pad_id, temperature,
                          generator=generator)                            # (rows, T)
    padding = torch.full((len(words), slots - words.shape[1]), cfg.pad_id, device=words.device)
    story.append(torch.cat([words[:, -1:], padding], dim=1))
    return [row[:row.index(cfg.eos_token_id)] for row in words.tolist()]


def tell_sentences(story, sentences_ids):
    """Given sentences join the story (a writer that is told what to write): one id list per
    told row; the rows after them (the untold stories of guidance) get empty sentences."""
    rows, cfg = story.ids.shape[0], story.cfg
    slots = [sentence_slots(ids, cfg)[1:] for ids in sentences_ids]      # BOS is in the story already
    slots += [sentence_slots([], cfg)[1:]] * (rows - len(slots))
    story.append(torch.tensor(slots, device=story.ids.device))
    return sentences_ids


@torch.no_grad()
def generate_stories(model, openings_ids, frames, settings, generator=None, first_codes=None, naive=False,
                     text_temperature=0.0, progress=False, sentences_ids=None):
    """B stories of `frames` frames from their opening sentences -> (codes (B, F, N), B lists
    of the F - 1 sentences written, as id lists).

    first_codes: optional (B, N) codes of a given first frame (drawn otherwise). settings:
    {"steps", "guidance", "temperature", "code_temperature"} of MaskGIT. Sentences are greedy
    by default (text_temperature 0), else sampled at text_temperature: greedy writes valid sentences
    far more often (docs/experiments.md, "Stories"). naive: recompute the whole story at every step
    (StorySoFar). With guidance, B more rows tell the same stories without words.
    sentences_ids: optional B lists of F - 1 id lists, sentences given instead of written
    (`change_scores`).
    """
    cfg = model.cfg
    device = next(model.parameters()).device
    openings = with_unconditional(openings_ids, settings["guidance"])
    prompt = torch.tensor([story_sequence([ids], [], cfg) for ids in openings], device=device)
    silent = torch.arange(len(openings), device=device) >= len(openings_ids)   # the untold rows
    story = StorySoFar(model, prompt, naive)
    drawn, sentences = [], []
    for k in tqdm(range(frames), desc="frames", disable=not progress, leave=False):
        if k == 0 and first_codes is not None:
            check_image_codes(first_codes, cfg)
            codes = first_codes.to(device)
        else:
            codes = draw_frame(story, settings, generator)
        drawn.append(codes)
        if k == frames - 1:
            break
        rows = len(openings)
        frame = [torch.full((rows, 1), cfg.soi_id, device=device), codes.repeat(rows // len(codes), 1) + cfg.image_offset,
                 torch.full((rows, 2), cfg.eoi_id, device=device)]
        frame[-1][:, 1] = cfg.bos_token_id                                # <|eoi|> BOS: the next sentence starts
        hidden = story.append(torch.cat(frame, dim=1))[:, -1]              # the frame joins the cache in one pass
        if sentences_ids is None:
            sentences.append(write_sentence(story, hidden, text_temperature, generator, silent)[:len(openings_ids)])
        else:
            sentences.append(tell_sentences(story, [told[k] for told in sentences_ids]))
    return torch.stack(drawn, dim=1), [list(row) for row in zip(*sentences)] or [[] for _ in openings_ids]


# ----------------------------------------------------------------------------------------
# 5. Scores
# ----------------------------------------------------------------------------------------

def encode_stories(stories, vq, text_tokenizer, device):
    """[(sentences' ids, frames' codes (F, N))] for Story's, every frame tokenized at once."""
    codes = encode_pictures(vq, np.concatenate([story.images for story in stories]), device)
    ends = np.cumsum([len(story.sentences) for story in stories])
    return [([text_tokenizer.encode(s) for s in story.sentences], codes[end - len(story.sentences):end])
            for story, end in zip(stories, ends)]


@torch.no_grad()
def scored_stories(model, vq, text_tokenizer, scoring, first=None, batch=45):
    """The stories that story_scores scores, in its order: [(frames (F, 32, 32, 3) uint8,
    F sentences, check_story's [(sentence valid, frame right)])], one per opening of the 90
    one-object captions. first: stop after that many (the same draws: the same generator
    and batches; `python evaluate.py stories` shows them)."""
    openings = one_object_captions()
    gen = torch.Generator(next(model.parameters()).device).manual_seed(scoring.seed)
    stories = []
    for i in range(0, len(openings) if first is None else first, batch):
        chunk = openings[i:i + batch]
        codes, written = generate_stories(model, [text_tokenizer.encode(p) for p in chunk], scoring.story_frames,
                                          scoring.settings, gen)                      # (B, F, N)
        for opening, frames, sentences in zip(chunk, world_frames(vq, codes), written):
            sentences = [opening] + [text_tokenizer.decode(ids).strip() for ids in sentences]
            stories.append((frames, sentences, check_story(frames, sentences)))
    return stories[:first]


def world_frames(vq, codes):
    """(B, F, N) codes -> (B, F, 32, 32, 3) uint8 frames, snapped to the world's colours."""
    pictures = decode_codes(vq, codes.flatten(0, 1))
    return np.stack([as_world_picture(picture) for picture in pictures]).reshape(*codes.shape[:2], *pictures.shape[1:])


@torch.no_grad()
def change_scores(model, vq, text_tokenizer, scoring, batch=45):
    """Frame 2 drawn from a GIVEN sentence, by kind of change: {"story_move",
    "story_recolour", "story_appear"}, each the share of frames 2 right among the openings
    whose frame 1 came out right (a lone object cannot disappear; a centred one has no
    free cell for another to appear in).

    Why: the scored stories' writer is greedy and writes its favourite change nearly every
    time, so their scores can hide a change the model cannot draw. Here each kind gets every
    one-object opening it can happen to, with one of its sentences drawn at random."""
    rng = random.Random(scoring.seed + 2000)
    gen = torch.Generator(next(model.parameters()).device).manual_seed(scoring.seed + 2000)
    scores = {}
    for kind in ("move", "recolour", "appear"):
        told = [(opening, rng.choice(options[kind])) for opening in one_object_captions()
                if kind in (options := possible_changes(parse_caption(opening)))]
        right = []
        for i in range(0, len(told), batch):
            chunk = [[text_tokenizer.encode(text) for text in pair] for pair in told[i:i + batch]]
            codes, _ = generate_stories(model, [opening for opening, _ in chunk], 2, scoring.settings, gen,
                                        sentences_ids=[[sentence] for _, sentence in chunk])
            for (opening, sentence), frames in zip(told[i:i + batch], world_frames(vq, codes)):
                (_, first), (_, second) = check_story(frames, [opening, sentence])
                right += [second] if first else []
        scores[f"story_{kind}"] = float(np.mean(right)) if right else 0.0
    return scores


def story_scores(model, vq, text_tokenizer, scoring):
    """Stories from the 90 one-object captions, story_frames frames each, scored by
    check_story: {"story_frames": frames right, "story_whole": stories with every
    frame right, "story_sentences": written sentences (frame 2 on) that are valid}, and
    the `change_scores` of frames drawn from given sentences."""
    results = [result for _, _, result in scored_stories(model, vq, text_tokenizer, scoring)]
    return {"story_frames": float(np.mean([right for story in results for _, right in story])),
            "story_whole": float(np.mean([all(right for _, right in story) for story in results])),
            "story_sentences": float(np.mean([valid for story in results for valid, _ in story[1:]])),
            **change_scores(model, vq, text_tokenizer, scoring)}

"""
The data Show-o learns from in this repository.

Show-o (arXiv 2408.12528v7, Appendix C "Training Pipeline") trains on ImageNet, large
image-text corpora and instruction data; this file stands in for them at laptop scale.

Most of this file is the "shapes world" (docs/shapes_world.md): a procedurally
generated image-text world, small enough that a tiny Show-o trains on a laptop CPU in
minutes, yet rich enough to exercise every part of the method. A scene is one or two
coloured shapes on a black 32x32 canvas; from each scene we derive

- an image and its caption      -> text-to-image pairs (<|t2i|> sequences; docs/sequences.md),
- question / answer pairs        -> multimodal understanding: captioning and VQA (<|mmu|> sequences),
- plain sentences (text_corpus)  -> BPE training and the language-modelling objective.

Because the world is known exactly, we can also *score* a generated image: describe()
reads the objects back from the pixels, and matches() checks them against the prompt.

The last section loads a user's own folder of captioned images, for people who want to
train on real pictures instead.

Everything is deterministic given a seed: each function takes its own random.Random,
never the global one, so the same seed gives the same data on every machine.

Read first: model.py. Read next: train.py.
"""

import itertools
import json
import random
import re
import warnings
from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# -----------------------------------------------------------------------------
# The world's vocabulary and geometry

IMAGE_SIZE = 32
CELL_SIZE = 16           # each object lives in a 16x16 cell of the 2x2 grid (or the centre box)
MIN_OBJECT_SIZE = 10     # side of an object's square bounding box, in pixels
MAX_OBJECT_SIZE = 14
CELL_MARGIN = 1          # gap between a box and its cell's edges: two objects never touch

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "white": (235, 235, 235),
}
SHAPES = ("circle", "square", "triangle")


@dataclass(frozen=True)
class Place:
    """Where an object may be: the top-left pixel of its 16x16 cell and its caption phrase."""
    left: int
    top: int
    phrase: str


# The four grid cells come first, in reading order: that order is the canonical order of
# objects in a caption. "center" is the 16x16 box centred in the image (pixels 8..23); it
# overlaps every cell, which is why only a scene with a single object may use it.
PLACES = {
    "top left": Place(0, 0, "at the top left"),
    "top right": Place(CELL_SIZE, 0, "at the top right"),
    "bottom left": Place(0, CELL_SIZE, "at the bottom left"),
    "bottom right": Place(CELL_SIZE, CELL_SIZE, "at the bottom right"),
    "center": Place((IMAGE_SIZE - CELL_SIZE) // 2, (IMAGE_SIZE - CELL_SIZE) // 2, "in the center"),
}
GRID_PLACES = ("top left", "top right", "bottom left", "bottom right")
PLACE_ORDER = {name: i for i, name in enumerate(PLACES)}
PHRASE_TO_PLACE = {place.phrase: name for name, place in PLACES.items()}


@dataclass(frozen=True)
class ShapeObject:
    """One object of a scene. (x, y) is the top-left corner of its size x size bounding box."""
    colour: str
    shape: str
    place: str
    x: int
    y: int
    size: int


def corner_range(place: str, size: int) -> tuple[range, range]:
    """The allowed x and y of the top-left corner of a box of side `size` in `place`.

    The box must stay CELL_MARGIN pixels clear of every edge of its cell."""
    cell = PLACES[place]
    slack = CELL_SIZE - 2 * CELL_MARGIN - size   # how far the box can slide inside the cell
    xs = range(cell.left + CELL_MARGIN, cell.left + CELL_MARGIN + slack + 1)
    ys = range(cell.top + CELL_MARGIN, cell.top + CELL_MARGIN + slack + 1)
    return xs, ys


def canonical_order(objects) -> list[ShapeObject]:
    """Objects sorted by the reading order of their places (how captions list them)."""
    return sorted(objects, key=lambda obj: PLACE_ORDER[obj.place])


# -----------------------------------------------------------------------------
# Random scenes

def random_object(rng: random.Random, place: str) -> ShapeObject:
    """A random colour, shape, size and position inside `place`."""
    colour = rng.choice(list(COLOURS))
    shape = rng.choice(SHAPES)
    size = rng.randint(MIN_OBJECT_SIZE, MAX_OBJECT_SIZE)
    xs, ys = corner_range(place, size)
    return ShapeObject(colour, shape, place, rng.choice(xs), rng.choice(ys), size)


def random_scene(rng: random.Random, num_objects: int | None = None) -> list[ShapeObject]:
    """A random scene of 1 or 2 objects (None: either, with equal chance), in canonical order.

    A single object picks uniformly among all five places; two objects take two distinct
    grid cells, never "center", so they cannot overlap."""
    if num_objects is None:
        num_objects = rng.choice((1, 2))
    if num_objects == 1:
        places = [rng.choice(list(PLACES))]
    elif num_objects == 2:
        places = rng.sample(GRID_PLACES, 2)
    else:
        raise ValueError(f"num_objects must be 1, 2 or None, got {num_objects!r}")
    return canonical_order(random_object(rng, place) for place in places)


# -----------------------------------------------------------------------------
# Drawing

@lru_cache(maxsize=None)
def shape_mask(shape: str, size: int) -> np.ndarray:
    """Boolean (size, size) mask of a shape filling a box of side `size`.

    A pixel is filled when its centre lies inside the shape, so edges are crisp (no
    anti-aliasing) and every shape spans its whole box, which describe() relies on."""
    centres = np.arange(size) + 0.5                     # pixel centres, box coordinates
    px, py = np.meshgrid(centres, centres)             # px varies along columns, py along rows
    half = size / 2
    if shape == "square":
        mask = np.ones((size, size), dtype=bool)
    elif shape == "circle":                             # disk inscribed in the box
        mask = (px - half) ** 2 + (py - half) ** 2 <= half ** 2
    elif shape == "triangle":
        # Isosceles, apex at the top centre, base along the bottom edge: at depth d below the
        # apex it is d/2 wide on each side. We measure each row at its lower edge (py + 0.5);
        # measured at the centre, the apex row of an even-sized box would come out empty.
        mask = np.abs(px - half) <= (py + 0.5) / 2
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    mask.flags.writeable = False   # the mask is cached and shared: nobody may change it
    return mask


def render(objects) -> np.ndarray:
    """Draw a scene: a (32, 32, 3) uint8 image with the objects on a black background."""
    image = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for obj in objects:
        box = image[obj.y:obj.y + obj.size, obj.x:obj.x + obj.size]   # a view: writes land in image
        box[shape_mask(obj.shape, obj.size)] = COLOURS[obj.colour]
    return image


# -----------------------------------------------------------------------------
# Text: captions, questions and answers

def object_phrase(obj: ShapeObject) -> str:
    """One object's phrase, e.g. 'a red circle at the top left'."""
    return f"a {obj.colour} {obj.shape} {PLACES[obj.place].phrase}"


def caption(objects) -> str:
    """The scene's caption, e.g. 'a red circle at the top left and a blue square at the bottom right'."""
    return " and ".join(object_phrase(obj) for obj in canonical_order(objects))


def number_word(n: int) -> str:
    """The answer to "how many shapes are there?" for n objects."""
    return {1: "one", 2: "two"}[n]


def questions(objects) -> list[tuple[str, str]]:
    """Every valid (question, answer) pair about a scene, in a fixed order.

    A colour question is only asked about a shape that appears once (otherwise "the circle"
    would be ambiguous), and a "what shape" question only about a place that holds an object."""
    objects = canonical_order(objects)
    shape_counts = {shape: sum(obj.shape == shape for obj in objects) for shape in SHAPES}
    pairs = [(f"what color is the {obj.shape}?", obj.colour)
             for obj in objects if shape_counts[obj.shape] == 1]
    pairs += [(f"what shape is {PLACES[obj.place].phrase}?", obj.shape) for obj in objects]
    pairs.append(("how many shapes are there?", number_word(len(objects))))
    pairs.append(("describe the image.", caption(objects)))
    return pairs


# One object phrase of the grammar; the alternatives come from the tables above, so the
# grammar cannot drift away from what caption() writes.
_OBJECT_PATTERN = "a ({}) ({}) ({})".format(
    "|".join(COLOURS), "|".join(SHAPES), "|".join(re.escape(p) for p in PHRASE_TO_PLACE))
_CAPTION_RE = re.compile(f"{_OBJECT_PATTERN}(?: and {_OBJECT_PATTERN})?")


def parse_caption(text: str) -> frozenset[tuple[str, str, str]]:
    """The set of (colour, shape, place) a caption or prompt asks for.

    The text must follow the caption grammar exactly (lower case, no full stop; surrounding
    whitespace is ignored) and describe a possible scene; otherwise ValueError."""
    match = _CAPTION_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a shapes-world caption: {text!r}; expected e.g. "
                         "'a red circle at the top left and a blue square at the bottom right'")
    groups = [g for g in match.groups() if g is not None]
    objects = [(colour, shape, PHRASE_TO_PLACE[phrase])
               for colour, shape, phrase in zip(groups[0::3], groups[1::3], groups[2::3])]
    places = [place for _, _, place in objects]
    if len(objects) == 2 and (places[0] == places[1] or "center" in places):
        raise ValueError(f"not a possible scene: {text!r}; two objects need two different "
                         "grid cells (top/bottom left/right), never the center")
    return frozenset(objects)


# -----------------------------------------------------------------------------
# Reading a scene back from pixels: the scorer for generated images

# A pixel belongs to an object when its brightest channel exceeds this. The background is 0
# and every palette colour has a channel of at least 190 (green), so halfway between leaves
# about 9 standard deviations of room for noise of sigma 10 on either side.
BRIGHTNESS_THRESHOLD = 95
# Regions smaller than this are specks (noise, decoder artefacts), not objects: the smallest
# object, a 10 px triangle, covers 60 pixels.
MIN_OBJECT_AREA = 20
# Fill ratio = region area / bounding-box area. As drawn, squares fill 1.0, circles
# 0.78..0.81 (ideal pi/4 = 0.785) and triangles 0.57..0.60 (ideal 0.5; the staircase edge
# adds the rest). Each threshold sits halfway between neighbours, so a handful of wrong
# pixels in a generated image does not flip the shape.
TRIANGLE_MAX_FILL = 0.69
CIRCLE_MAX_FILL = 0.90
# A lone object is "center" when its centroid is within this many pixels of the image centre
# on both axes. An object in a grid cell has its centroid at least 6 px off on the x axis. A
# centred object's box centre is at most 2 px off, and a triangle's centroid sits up to 2 px
# below its box centre (its mass is in the base): at most 3.3 px off in all. 5 px leaves a
# margin of at least 1 px on both sides.
CENTER_TOLERANCE = 5


def as_rgb_array(image) -> np.ndarray:
    """A PIL image or (32, 32, 3) uint8 array as a (32, 32, 3) uint8 array; else ValueError."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    expected = (f"expected a {IMAGE_SIZE}x{IMAGE_SIZE} RGB image "
                f"(PIL, or a ({IMAGE_SIZE}, {IMAGE_SIZE}, 3) uint8 array)")
    if not isinstance(image, np.ndarray) or image.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ValueError(f"{expected}, got {getattr(image, 'shape', type(image).__name__)}")
    if image.dtype != np.uint8:
        raise ValueError(f"{expected}, got dtype {image.dtype}; tensor_to_image() converts model output")
    return image


def connected_regions(mask: np.ndarray) -> list[np.ndarray]:
    """The 4-connected regions of True pixels in a 2-D mask, each an (N, 2) array of (row, col).

    A breadth-first flood fill from every pixel not yet visited: plain and fast enough at 32x32."""
    height, width = mask.shape
    seen = np.zeros_like(mask)
    regions = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        queue, pixels = deque([start]), []
        while queue:
            row, col = queue.popleft()
            pixels.append((row, col))
            for r, c in ((row - 1, col), (row + 1, col), (row, col - 1), (row, col + 1)):
                if 0 <= r < height and 0 <= c < width and mask[r, c] and not seen[r, c]:
                    seen[r, c] = True
                    queue.append((r, c))
        regions.append(np.array(pixels))
    return regions


def nearest_colour(rgb) -> str:
    """The palette colour closest (Euclidean distance in RGB) to an observed colour."""
    return min(COLOURS, key=lambda name: sum((float(a) - b) ** 2 for a, b in zip(rgb, COLOURS[name])))


def shape_from_fill(fill: float) -> str:
    """Name a shape from the fraction of its bounding box it covers (see the thresholds above)."""
    if fill <= TRIANGLE_MAX_FILL:
        return "triangle"
    if fill <= CIRCLE_MAX_FILL:
        return "circle"
    return "square"


def place_from_centroid(x: float, y: float, alone: bool) -> str:
    """The place of an object whose centroid is (x, y). Only a lone object can be "center"."""
    middle = IMAGE_SIZE / 2
    if alone and abs(x - middle) < CENTER_TOLERANCE and abs(y - middle) < CENTER_TOLERANCE:
        return "center"
    vertical = "top" if y < middle else "bottom"
    horizontal = "left" if x < middle else "right"
    return f"{vertical} {horizontal}"


def find_objects(image) -> list[tuple[str, str, str]]:
    """(colour, shape, place) of every object found in an image, one entry per region found."""
    pixels = as_rgb_array(image)
    mask = pixels.max(axis=2) > BRIGHTNESS_THRESHOLD
    regions = [region for region in connected_regions(mask) if len(region) >= MIN_OBJECT_AREA]
    found = []
    for region in regions:
        rows, cols = region[:, 0], region[:, 1]
        # the median colour ignores the few outlier pixels that noise or decoding produces
        colour = nearest_colour(np.median(pixels[rows, cols], axis=0))
        box_area = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        shape = shape_from_fill(len(region) / box_area)
        # +0.5: measure at pixel centres, the same coordinates the shapes were drawn in
        place = place_from_centroid(cols.mean() + 0.5, rows.mean() + 0.5, alone=len(regions) == 1)
        found.append((colour, shape, place))
    return found


def describe(image) -> frozenset[tuple[str, str, str]]:
    """The set of (colour, shape, place) an image shows, read from its pixels.

    Works on any 32x32 RGB image, not just rendered ones: objects are the connected regions
    of bright pixels (specks below MIN_OBJECT_AREA ignored), coloured by the nearest palette
    colour to their median, placed by their centroid, and shaped by how they fill their box."""
    return frozenset(find_objects(image))


def matches(image, prompt: str) -> bool:
    """Does the image show exactly what the prompt asks for?

    Compares describe(image) with parse_caption(prompt), and also the number of objects,
    so that two identical objects in one cell do not pass for one."""
    wanted = parse_caption(prompt)
    found = find_objects(image)
    return len(found) == len(wanted) and frozenset(found) == wanted


# -----------------------------------------------------------------------------
# Data sets

@dataclass
class Example:
    """One scene with everything derived from it."""
    image: np.ndarray                 # (32, 32, 3) uint8
    caption: str
    qa: list[tuple[str, str]]         # every valid (question, answer) pair
    objects: list[ShapeObject]        # in canonical order


def make_example(objects) -> Example:
    """Render and describe a scene."""
    objects = canonical_order(objects)
    return Example(render(objects), caption(objects), questions(objects), objects)


# -----------------------------------------------------------------------------
# Held-out combinations: a test of composition
#
# There are only 90 one-object captions (6 colours x 3 shapes x 5 places) and 1,944
# two-object ones, so a training set of thousands of scenes holds nearly every caption:
# a score on "new" prompts mostly measures new pictures of captions seen in training. To
# also measure composition, these pairs of object kinds (colour + shape) NEVER appear
# together in a training scene. Each of the 18 kinds is in exactly one pair, so every
# kind is still trained on, alone and beside 16 other kinds; only these 9 pairings are
# new at test time: 9 pairs x 12 ordered placements = 108 two-object captions.
HELD_OUT_PAIRS = (
    (("red", "circle"), ("blue", "square")),
    (("red", "square"), ("green", "triangle")),
    (("red", "triangle"), ("yellow", "circle")),
    (("green", "circle"), ("purple", "square")),
    (("green", "square"), ("white", "triangle")),
    (("blue", "circle"), ("yellow", "triangle")),
    (("blue", "triangle"), ("white", "circle")),
    (("yellow", "square"), ("purple", "triangle")),
    (("purple", "circle"), ("white", "square")),
)
_HELD_OUT_KIND_PAIRS = {frozenset(pair) for pair in HELD_OUT_PAIRS}


def is_held_out(objects) -> bool:
    """Does this scene pair two object kinds that training never shows together?"""
    kinds = frozenset((obj.colour, obj.shape) for obj in objects)
    return len(objects) == 2 and kinds in _HELD_OUT_KIND_PAIRS


def held_out_captions() -> list[str]:
    """All 108 two-object captions that pair a held-out pair of kinds (fixed order)."""
    captions = []
    for first, second in HELD_OUT_PAIRS:
        for place_a, place_b in itertools.permutations(GRID_PLACES, 2):
            objects = [ShapeObject(*first, place_a, 0, 0, MIN_OBJECT_SIZE),
                       ShapeObject(*second, place_b, 0, 0, MIN_OBJECT_SIZE)]
            captions.append(caption(objects))
    return captions


def one_object_captions() -> list[str]:
    """All 90 one-object captions (colour x shape x place), in a fixed order."""
    return [caption([ShapeObject(colour, shape, place, 0, 0, MIN_OBJECT_SIZE)])
            for colour in COLOURS for shape in SHAPES for place in PLACES]


def random_scenes(rng: random.Random, n: int, num_objects: int | None = None,
                  held_out: bool | None = False) -> list[list[ShapeObject]]:
    """n random scenes. held_out: False (training: never a held-out pairing), True (only
    held-out pairings, two objects) or None (no filter)."""
    scenes = []
    while len(scenes) < n:
        scene = random_scene(rng, 2 if held_out else num_objects)
        if held_out is None or is_held_out(scene) == held_out:
            scenes.append(scene)
    return scenes


def make_examples(n: int, seed: int, num_objects: int | None = None,
                  held_out: bool | None = False) -> list[Example]:
    """n random examples; the same seed always gives the same list.

    By default no example pairs a held-out pair of kinds (see HELD_OUT_PAIRS), so the
    training set and the usual test sets never do; held_out=True gives only such scenes."""
    return [make_example(scene) for scene in random_scenes(random.Random(seed), n, num_objects, held_out)]


def text_corpus(n: int, seed: int) -> list[str]:
    """n short texts of the world, for BPE training and the language-modelling objective.

    Scene after scene (never a held-out pairing), we take its caption and then each
    question followed by its answer (e.g. "what color is the circle? red"), until there
    are n texts."""
    rng = random.Random(seed)
    texts = []
    while len(texts) < n:
        [objects] = random_scenes(rng, 1)
        texts.append(caption(objects))
        texts.extend(f"{question} {answer}" for question, answer in questions(objects))
    return texts[:n]


# -----------------------------------------------------------------------------
# Stories: frames that change one thing at a time (mixed-modality generation)
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
    one its box; a moved or new object gets a fresh random box in its cell."""
    objects = []
    for colour, shape, place in scene:
        same = [o for o in previous if (o.colour, o.shape, o.place) == (colour, shape, place)]
        recoloured = [o for o in previous if (o.shape, o.place) == (shape, place)]
        if same or recoloured:
            old = (same or recoloured)[0]
            objects.append(ShapeObject(colour, shape, place, old.x, old.y, old.size))
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


# -----------------------------------------------------------------------------
# Pixels <-> tensors

def image_to_tensor(image) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float32 (..., 3, H, W) in [-1, 1], the image tokenizer's range.

    Works on one image or a batch (any leading dimensions)."""
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8))   # a copy: torch wants a writable buffer
    return pixels.movedim(-1, -3).float() / 127.5 - 1


def tensor_to_image(tensor: torch.Tensor) -> np.ndarray:
    """float (..., 3, H, W) in [-1, 1] -> uint8 (..., H, W, 3); values outside the range are clamped.

    Works on one image or a batch (any leading dimensions)."""
    pixels = ((tensor.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255)
    return pixels.to(torch.uint8).movedim(-3, -1).numpy()


def pictures_to_tensor(images, resolution):
    """uint8 (B, H, W, 3) pictures -> float (B, 3, res, res) in [-1, 1], resized when needed."""
    if images.shape[1] != resolution:
        images = np.stack([resize_and_crop(Image.fromarray(image), resolution) for image in images])
    return image_to_tensor(images)


@torch.no_grad()
def encode_pictures(vq, images, device, batch=256):
    """Image codes (B, N) for uint8 pictures (B, H, W, 3), a chunk at a time.

    vq is a tokenizer.ImageTokenizer; pictures are resized to its resolution. Chunks keep
    memory small: 20,000 pictures as float32 at 256 px would be 16 GB.
    """
    res = vq.cfg.resolution
    return torch.cat([vq.encode(pictures_to_tensor(images[i:i + batch], res).to(device)).cpu()
                      for i in range(0, len(images), batch)])


@torch.no_grad()
def picture_features(network, images, device, batch=256):
    """Continuous features (B, N, C) of uint8 pictures (B, H, W, 3), a chunk at a time.

    network maps (b, 3, H, W) pixels in [-1, 1] to a (b, C, h, w) grid, N = h*w cells in
    row-major order: the LFQ encoder before quantization (`vq.encoder`) or the contrastive
    encoder's `features` (train.py `mmu_features`, the representation ablation)."""
    return torch.cat([network(image_to_tensor(images[i:i + batch]).to(device)).flatten(2).transpose(1, 2).cpu()
                      for i in range(0, len(images), batch)])


@torch.no_grad()
def decode_codes(vq, codes, batch=256):
    """uint8 pictures (B, H, W, 3) for (B, N) codes, a chunk at a time."""
    device = next(vq.parameters()).device
    return np.concatenate([tensor_to_image(vq.decode(codes[i:i + batch].to(device)))
                           for i in range(0, len(codes), batch)])


# -----------------------------------------------------------------------------
# A user's own images: a folder with a captions.jsonl

CAPTIONS_FILE = "captions.jsonl"
EXPECTED_LINE = '{"image": "relative/path.png", "caption": "..."}'


def read_captions_file(path: Path) -> list[tuple[str, str]]:
    """The (image path, caption) pairs of a captions.jsonl; blank lines are ignored.

    A malformed line raises ValueError naming its line number, before any image is loaded."""
    entries = []
    with open(path, encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            where = f"{CAPTIONS_FILE} line {line_number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: not valid JSON ({error.msg}); expected {EXPECTED_LINE}") from None
            if not isinstance(record, dict):
                raise ValueError(f"{where}: expected a JSON object like {EXPECTED_LINE}")
            missing = [key for key in ("image", "caption") if not isinstance(record.get(key), str)]
            if missing:
                raise ValueError(f"{where}: missing or non-string {' and '.join(map(repr, missing))}; "
                                 f"expected {EXPECTED_LINE}")
            entries.append((record["image"], record["caption"]))
    return entries


# PIL's integer modes that hold more than 8 bits: the full-scale value of each. Image.convert
# ("RGB") clips these at 255 instead of scaling (a 16-bit picture reads ~98% white), so
# read_picture scales them itself. "I" (32-bit) has no fixed range: see _full_scale.
_SIXTEEN_BIT = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535}
# What PIL raises for a file it cannot decode: mostly OSError, SyntaxError or EOFError for
# broken headers, ValueError for what it cannot convert. DecompressionBombError (a picture
# over twice Image.MAX_IMAGE_PIXELS) is not an OSError, so it must be named.
_UNREADABLE = (OSError, SyntaxError, EOFError, ValueError, Image.DecompressionBombError)
# Modes with an alpha channel ("a": premultiplied). Not `"A" in mode`: that would catch "LAB".
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def _full_scale(mode: str, values: np.ndarray) -> float:
    """The value that means white in a high-bit-depth picture of this mode.

    The file does not say which range it uses, so "I" and "F" take the smallest usual range
    that holds their largest value: "F" 1, 255 or 65535 (above: clipped), "I" 255, 65535 or
    the int32 maximum."""
    if mode in _SIXTEEN_BIT:
        return _SIXTEEN_BIT[mode]
    top = np.nanmax(values, initial=0)
    ranges = (1.0, 255, 65535) if mode == "F" else (255, 65535, 2 ** 31 - 1)
    return next((scale for scale in ranges if top <= scale), ranges[-1])


def read_picture(path) -> np.ndarray:
    """Any picture file -> uint8 (H, W, 3) RGB at its own size (no resizing).

    Every PIL mode comes out as 8-bit RGB with its values scaled, not clipped:
    - 16-bit greyscale ("I;16*"): value * 255 / 65535;
    - 32-bit integer ("I") and float ("F") greyscale: value * 255 / full scale, the full
      scale being the smallest usual range that holds the largest value (_full_scale:
      "F" 1, 255 or 65535; "I" 255, 65535 or 2**31 - 1); negatives and NaN become 0, values
      past the full scale 255;
    - transparency (RGBA, LA, PA, a palette or colour marked transparent) is composited on
      white, not dropped (which shows whatever colour hides under alpha 0, often black);
    - everything else (RGB, L, 1, P, CMYK, YCbCr, ...) through PIL's own conversion.
    A file that cannot be read (missing, a folder, not a picture, truncated, or so large
    that PIL raises DecompressionBombError: over twice Image.MAX_IMAGE_PIXELS) raises a
    one-line ValueError naming it, never a traceback from inside PIL."""
    try:
        with Image.open(path) as image:
            image.load()   # decode now, inside the try: a truncated file fails here, not later
            if image.mode in _SIXTEEN_BIT or image.mode in ("I", "F"):
                values = np.asarray(image, dtype=np.float64)
                grey = np.nan_to_num(values / _full_scale(image.mode, values) * 255)
                return np.repeat(grey.clip(0, 255).round().astype(np.uint8)[..., None], 3, axis=2)
            if image.mode in _ALPHA_MODES or "transparency" in image.info:
                white = Image.new("RGBA", image.size, "white")
                return np.array(Image.alpha_composite(white, image.convert("RGBA")).convert("RGB"))
            return np.array(image.convert("RGB"))
    except _UNREADABLE as error:
        reason = ": ".join([type(error).__name__] + str(error).splitlines()[:1])   # one line
        raise ValueError(f"cannot read image {path} ({reason}): give a PNG or JPEG file") from None


def resize_and_crop(image: Image.Image, resolution: int) -> np.ndarray:
    """Scale the shorter side to `resolution` (bicubic), then cut out the centre square."""
    width, height = image.size
    scale = resolution / min(width, height)
    # max(): rounding must never leave the longer side short of the crop
    new_width, new_height = max(resolution, round(width * scale)), max(resolution, round(height * scale))
    image = image.resize((new_width, new_height), Image.Resampling.BICUBIC)
    left, top = (new_width - resolution) // 2, (new_height - resolution) // 2
    return np.array(image.crop((left, top, left + resolution, top + resolution)))   # writable copy


def load_caption_folder(folder, resolution: int = IMAGE_SIZE) -> list[tuple[np.ndarray, str]]:
    """Load a user's captioned images as (uint8 resolution x resolution x 3 image, caption) pairs.

    The folder holds the images and a captions.jsonl with one line per image,
    {"image": "relative/path.png", "caption": "..."}. Pictures are read with read_picture.
    Pictures that cannot be read (a DecompressionBomb too) and lines with an empty caption
    are skipped and counted in one warning, so one bad line does not stop a long training
    run; but if every caption is empty the folder is unusable: ValueError."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder {folder}: expected a folder of images "
                                f"with a {CAPTIONS_FILE} in it")
    captions_path = folder / CAPTIONS_FILE
    if not captions_path.is_file():
        raise FileNotFoundError(f"no {captions_path}: expected one line per image, like {EXPECTED_LINE}")
    entries = read_captions_file(captions_path)
    # Checked before any picture is read: a whole folder of "" is a mistake in how the file
    # was written (a wrong key, an export that lost the text), not a few bad lines.
    if entries and not any(text.strip() for _, text in entries):
        raise ValueError(f"every caption in {captions_path} is empty: give each picture a caption")
    items, unreadable, empty = [], [], []
    for relative_path, text in entries:
        if not text.strip():          # nothing to learn from; skip before reading the picture
            empty.append(relative_path)
            continue
        try:
            picture = read_picture(folder / relative_path)
        except ValueError as error:
            unreadable.append(str(error))
            continue
        items.append((resize_and_crop(Image.fromarray(picture), resolution), text))
    if unreadable or empty:
        reasons = []
        if unreadable:
            reasons.append(f"{len(unreadable)} could not be read (first: {unreadable[0]})")
        if empty:
            reasons.append(f"{len(empty)} have an empty caption (first: {empty[0]})")
        warnings.warn(f"skipped {len(unreadable) + len(empty)} of {len(entries)} images: "
                      + "; ".join(reasons), stacklevel=2)
    return items


# -----------------------------------------------------------------------------
# What train.py trains on

def training_set(data_dir, scenes, seed):
    """(pictures uint8 (B, 32, 32, 3), captions, question-answer lists, LM sentences).

    The shapes world (`scenes` pictures from `seed`), or a folder of your own pictures
    with a captions.jsonl, whose captions then serve as the captioning answers and the
    language-modelling text too. Pictures stay small and uint8 here; encode_pictures
    resizes a chunk at a time when the image tokenizer works at another resolution (a
    released one fine-tuned with train.py --init).
    """
    if data_dir:
        items = load_caption_folder(data_dir, IMAGE_SIZE)
        if not items:
            raise ValueError(f"no readable images listed in {data_dir}/{CAPTIONS_FILE}")
        captions = [caption for _, caption in items]
        return (np.stack([image for image, _ in items]), captions,
                [[("describe the image.", c)] for c in captions], captions)
    examples = make_examples(scenes, seed=seed)
    return (np.stack([e.image for e in examples]), [e.caption for e in examples], [e.qa for e in examples],
            text_corpus(scenes, seed))

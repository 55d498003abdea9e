"""The data Show-o learns from in this repository: the shapes world.

Show-o (arXiv 2408.12528v7, Appendix C "Training Pipeline") trains on ImageNet, large
image-text corpora and instruction data; this file stands in for them at laptop scale.

The "shapes world" (docs/shapes_world.md) is a procedurally generated image-text world,
small enough that a tiny Show-o trains on a laptop CPU in minutes, yet rich enough to
exercise every part of the method. A scene is one or two coloured shapes on a black 32x32
canvas; from each scene we derive

- an image and its caption      -> text-to-image pairs (<|t2i|> sequences; docs/sequences.md),
- question / answer pairs        -> multimodal understanding: captioning and VQA (<|mmu|> sequences),
- plain sentences (text_corpus)  -> BPE training and the language-modelling objective.

Because the world is known exactly, we can also *score* a generated image: describe()
reads the objects back from the pixels, and matches() checks them against the prompt. The
last section turns pictures into the image tokenizer's tensors and codes and back. Every
function takes its own random.Random, so a seed gives the same data on every machine.
(Your own captioned pictures: pictures.load_caption_folder; stories: stories.py.)

Read first: sampling.py. Read next: stories.py and readers.py (the extensions), or the
reference files beside the reading path (README.md).
"""

import itertools
import random
import re
from collections import deque
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from PIL import Image

from pictures import resize_and_crop

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
# Pixels <-> tensors

def image_to_tensor(image) -> torch.Tensor:
    """uint8 (..., H, W, 3), one image or a batch -> float32 (..., 3, H, W) in [-1, 1] (the tokenizer's)."""
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8))   # a copy: torch wants a writable buffer
    return pixels.movedim(-1, -3).float() / 127.5 - 1


def tensor_to_image(tensor: torch.Tensor) -> np.ndarray:
    """float (..., 3, H, W) in [-1, 1] -> uint8 (..., H, W, 3), one image or a batch; clamped to range."""
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
def decode_codes(vq, codes, batch=256):
    """uint8 pictures (B, H, W, 3) for (B, N) codes, a chunk at a time."""
    device = next(vq.parameters()).device
    return np.concatenate([tensor_to_image(vq.decode(codes[i:i + batch].to(device)))
                           for i in range(0, len(codes), batch)])


def as_world_picture(picture):
    """A decoded picture at the shapes world's 32 px, which `describe` reads."""
    if picture.shape[0] == IMAGE_SIZE:
        return picture
    return np.array(Image.fromarray(picture).resize((IMAGE_SIZE,) * 2, Image.Resampling.BOX))

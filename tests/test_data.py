"""Tests for data.py: the shapes world (docs/shapes_world.md) and the caption-folder loader."""

import itertools
import json
import random
import re
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

import data
import pictures
from data import COLOURS, PLACES, SHAPES, ShapeObject

PALETTE = {(0, 0, 0), *COLOURS.values()}
GRID = ("top left", "top right", "bottom left", "bottom right")

# The caption grammar written out independently of data.py, straight from the spec.
_OBJECT = (r"a (red|green|blue|yellow|purple|white) (circle|square|triangle) "
           r"(at the top left|at the top right|at the bottom left|at the bottom right|in the center)")
CAPTION_RE = re.compile(rf"{_OBJECT}( and {_OBJECT})?")


def as_set(objects):
    return frozenset((obj.colour, obj.shape, obj.place) for obj in objects)


def single(colour, shape, place, size=12, corner="min"):
    """One object of the given kind, at the smallest or largest allowed corner of its cell."""
    xs, ys = data.corner_range(place, size)
    pick = min if corner == "min" else max
    return ShapeObject(colour, shape, place, pick(xs), pick(ys), size)


def object_mask(obj):
    mask = np.zeros((32, 32), dtype=bool)
    mask[obj.y:obj.y + obj.size, obj.x:obj.x + obj.size] = data.shape_mask(obj.shape, obj.size)
    return mask


def dilate(mask):
    """Grow a mask by one pixel in all 8 directions."""
    padded = np.pad(mask, 1)
    grown = np.zeros_like(mask)
    for dy, dx in itertools.product(range(3), repeat=2):
        grown |= padded[dy:dy + 32, dx:dx + 32]
    return grown


# -----------------------------------------------------------------------------
# Vocabulary and scenes

def test_vocabulary_matches_spec():
    assert data.IMAGE_SIZE == 32
    assert list(COLOURS.items()) == [
        ("red", (220, 40, 40)), ("green", (40, 190, 60)), ("blue", (50, 90, 230)),
        ("yellow", (235, 215, 40)), ("purple", (150, 60, 200)), ("white", (235, 235, 235))]
    assert SHAPES == ("circle", "square", "triangle")
    assert [PLACES[p].phrase for p in PLACES] == [
        "at the top left", "at the top right", "at the bottom left", "at the bottom right", "in the center"]
    assert [(PLACES[p].left, PLACES[p].top) for p in PLACES] == [(0, 0), (16, 0), (0, 16), (16, 16), (8, 8)]


def test_same_seed_same_data_different_seed_different_data():
    a, b, c = data.make_examples(50, seed=3), data.make_examples(50, seed=3), data.make_examples(50, seed=4)
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b))
    assert [(x.caption, x.qa, x.objects) for x in a] == [(y.caption, y.qa, y.objects) for y in b]
    assert [x.caption for x in a] != [x.caption for x in c]
    assert data.text_corpus(100, seed=3) == data.text_corpus(100, seed=3) != data.text_corpus(100, seed=4)


def test_global_random_state_is_untouched():
    random.seed(0)
    expected = random.random()
    random.seed(0)
    data.make_examples(20, seed=1)
    assert random.random() == expected


def test_scene_statistics():
    rng = random.Random(0)
    scenes = [data.random_scene(rng) for _ in range(4000)]
    singles = [s for s in scenes if len(s) == 1]
    assert {len(s) for s in scenes} == {1, 2}
    assert 0.45 < len(singles) / len(scenes) < 0.55
    for place in PLACES:   # a lone object picks among the five places uniformly
        assert 0.15 < sum(s[0].place == place for s in singles) / len(singles) < 0.25
    assert all(len(data.random_scene(rng, 2)) == 2 for _ in range(50))
    with pytest.raises(ValueError):
        data.random_scene(rng, 3)


def test_geometry():
    for example in data.make_examples(1000, seed=5):
        objects = example.objects
        assert set(map(tuple, example.image.reshape(-1, 3))) <= PALETTE
        for obj in objects:
            cell = PLACES[obj.place]
            assert 10 <= obj.size <= 14
            assert cell.left + 1 <= obj.x and obj.x + obj.size <= cell.left + 15
            assert cell.top + 1 <= obj.y and obj.y + obj.size <= cell.top + 15
            # the drawn shape spans its whole box and is painted in its colour
            rows, cols = np.nonzero(object_mask(obj))
            assert (rows.min(), rows.max(), cols.min(), cols.max()) == (
                obj.y, obj.y + obj.size - 1, obj.x, obj.x + obj.size - 1)
            assert (example.image[object_mask(obj)] == COLOURS[obj.colour]).all()
        if len(objects) == 2:
            first, second = objects
            assert first.place != second.place and "center" not in (first.place, second.place)
            assert not (dilate(object_mask(first)) & object_mask(second)).any()   # never touch
        assert (example.image.any(axis=2) == np.logical_or.reduce([object_mask(o) for o in objects])).all()


def test_shape_masks():
    for size in range(10, 15):
        square, circle, triangle = (data.shape_mask(s, size) for s in ("square", "circle", "triangle"))
        assert square.all()
        assert circle[size // 2].all() and circle[:, size // 2].all()   # the disk reaches all four edges
        assert not circle[0, 0] and not circle[-1, -1]
        assert triangle[-1].all()                                         # base along the bottom edge
        apex = np.nonzero(triangle[0])[0]
        assert len(apex) == (2 if size % 2 == 0 else 1) and apex.mean() == (size - 1) / 2
        assert (triangle == triangle[:, ::-1]).all()                      # isosceles
        assert (triangle.sum(axis=1)[1:] >= triangle.sum(axis=1)[:-1]).all()


# -----------------------------------------------------------------------------
# Text

def test_captions_follow_the_grammar_and_parse_back():
    for example in data.make_examples(1000, seed=6):
        assert CAPTION_RE.fullmatch(example.caption), example.caption
        assert data.parse_caption(example.caption) == as_set(example.objects)
        if len(example.objects) == 2:   # listed in reading order of their places
            first, second = (example.caption.index(PLACES[o.place].phrase) for o in example.objects)
            assert first < second and [o.place for o in example.objects] == \
                sorted((o.place for o in example.objects), key=GRID.index)


def test_caption_examples():
    red_circle = single("red", "circle", "bottom right")
    blue_square = single("blue", "square", "top left")
    assert data.caption([single("white", "triangle", "center")]) == "a white triangle in the center"
    assert data.caption([red_circle, blue_square]) == \
        "a blue square at the top left and a red circle at the bottom right"
    assert data.parse_caption("  a red circle at the bottom right and a blue square at the top left\n") == \
        {("red", "circle", "bottom right"), ("blue", "square", "top left")}


@pytest.mark.parametrize("text", [
    "", "a red circle", "A red circle at the top left", "a red circle at the top left.",
    "a pink circle at the top left", "a red hexagon in the center", "a red circle at the centre",
    "a red circle at the top left and", "a red circle at the top left, a blue square at the top right",
    "a red circle at the top left and a blue square at the top left",      # two objects in one cell
    "a red circle in the center and a blue square at the top left",        # center is for lone objects
])
def test_parse_caption_rejects_text_outside_the_grammar(text):
    with pytest.raises(ValueError, match=re.escape(repr(text))):
        data.parse_caption(text)


def test_questions():
    circle, square = single("red", "circle", "top right"), single("green", "square", "bottom left")
    assert data.questions([square, circle]) == [
        ("what color is the circle?", "red"),
        ("what color is the square?", "green"),
        ("what shape is at the top right?", "circle"),
        ("what shape is at the bottom left?", "square"),
        ("how many shapes are there?", "two"),
        ("describe the image.", "a red circle at the top right and a green square at the bottom left"),
    ]
    two_circles = [circle, single("blue", "circle", "bottom right")]
    assert not any(q.startswith("what color") for q, _ in data.questions(two_circles))
    assert ("how many shapes are there?", "two") in data.questions(two_circles)
    assert data.questions([single("yellow", "triangle", "center")]) == [
        ("what color is the triangle?", "yellow"),
        ("what shape is in the center?", "triangle"),
        ("how many shapes are there?", "one"),
        ("describe the image.", "a yellow triangle in the center"),
    ]


def test_questions_answers_are_true_of_the_scene():
    for example in data.make_examples(500, seed=7):
        by_phrase = {PLACES[o.place].phrase: o for o in example.objects}
        shapes = [o.shape for o in example.objects]
        asked_shapes = set()
        for question, answer in example.qa:
            if match := re.fullmatch(r"what color is the (\w+)\?", question):
                asked_shapes.add(match[1])
                assert [o.colour for o in example.objects if o.shape == match[1]] == [answer]
            elif match := re.fullmatch(r"what shape is (.+)\?", question):
                assert by_phrase[match[1]].shape == answer
            elif question == "how many shapes are there?":
                assert answer == ["one", "two"][len(shapes) - 1]
            else:
                assert question == "describe the image." and answer == example.caption
        assert asked_shapes == {s for s in shapes if shapes.count(s) == 1}
        assert len(example.qa) == len(asked_shapes) + len(shapes) + 2


def test_text_corpus():
    texts = data.text_corpus(300, seed=0)
    assert len(texts) == 300 and all(isinstance(t, str) and t for t in texts)
    assert texts[0] == data.make_examples(1, seed=0)[0].caption   # both start from the same scene
    assert any(t.startswith("what color is the") for t in texts)
    assert any(t.startswith("how many shapes are there? ") for t in texts)
    assert sum(bool(CAPTION_RE.fullmatch(t)) for t in texts) > 30


# -----------------------------------------------------------------------------
# Reading images back

def test_describe_reads_every_single_object():
    combinations = list(itertools.product(COLOURS, SHAPES, PLACES))
    assert len(combinations) == 90
    for colour, shape, place in combinations:
        for size, corner in itertools.product(range(10, 15), ("min", "max")):
            obj = single(colour, shape, place, size, corner)
            image = data.render([obj])
            assert data.describe(image) == {(colour, shape, place)}, obj
            assert data.matches(image, data.caption([obj]))


def test_describe_reads_two_object_scenes():
    for example in data.make_examples(500, seed=8, num_objects=2):
        assert data.describe(example.image) == as_set(example.objects), example.caption
        assert data.matches(example.image, example.caption)


def add_noise_and_specks(image, rng):
    """Gaussian noise (sigma 10) plus a few small bright specks away from the objects."""
    noisy = image.astype(np.float64) + rng.normal(0, 10, image.shape)
    free = ~dilate(dilate(image.any(axis=2)))
    for _ in range(4):
        row, col = rng.integers(0, 31, size=2)
        if free[row:row + 2, col:col + 2].all():
            noisy[row:row + 2, col:col + rng.integers(1, 3)] = rng.integers(150, 256, size=3)
    return noisy.clip(0, 255).astype(np.uint8)


def test_describe_is_robust_to_noise_and_specks():
    rng = np.random.default_rng(0)
    for example in data.make_examples(400, seed=9):
        noisy = add_noise_and_specks(example.image, rng)
        assert data.describe(noisy) == as_set(example.objects), example.caption


def test_describe_of_an_empty_image():
    assert data.describe(np.zeros((32, 32, 3), np.uint8)) == frozenset()
    assert not data.matches(np.zeros((32, 32, 3), np.uint8), "a red circle in the center")


def test_matches_is_false_for_a_different_prompt():
    example = data.make_examples(1, seed=10, num_objects=2)[0]
    first, second = example.objects
    other_colour = next(c for c in COLOURS if c != first.colour)
    other_shape = next(s for s in SHAPES if s != second.shape)
    assert data.matches(example.image, example.caption)
    assert not data.matches(example.image, data.caption([replace(first, colour=other_colour), second]))
    assert not data.matches(example.image, data.caption([first, replace(second, shape=other_shape)]))
    assert not data.matches(example.image, data.caption([first]))               # an object too many
    # two identical objects in one cell must not pass for one object
    twins = data.render([ShapeObject("red", "square", "top left", 1, 1, 6),
                         ShapeObject("red", "square", "top left", 9, 9, 6)])
    assert data.describe(twins) == {("red", "square", "top left")}
    assert not data.matches(twins, "a red square at the top left")


def test_describe_accepts_pil_and_rejects_other_sizes():
    example = data.make_examples(1, seed=11)[0]
    assert data.describe(Image.fromarray(example.image)) == as_set(example.objects)
    with pytest.raises(ValueError, match="32x32"):
        data.describe(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="32x32"):
        data.describe(Image.new("RGB", (16, 16)))
    with pytest.raises(ValueError, match="uint8"):
        data.describe(example.image.astype(np.float32))


# -----------------------------------------------------------------------------
# Pixels <-> tensors

def test_image_tensor_round_trip():
    images = np.stack([e.image for e in data.make_examples(4, seed=12)])
    tensor = data.image_to_tensor(images[0])
    assert tensor.shape == (3, 32, 32) and tensor.dtype == torch.float32
    assert tensor.min() == -1 and tensor.max() <= 1
    assert torch.equal(tensor[:, 0, 0], torch.tensor([-1.0, -1.0, -1.0]))
    assert np.array_equal(data.tensor_to_image(tensor), images[0])
    batch = data.image_to_tensor(images)
    assert batch.shape == (4, 3, 32, 32)
    assert np.array_equal(data.tensor_to_image(batch), images)
    assert torch.equal(data.image_to_tensor(np.full((1, 1, 3), 255, np.uint8)), torch.ones(3, 1, 1))
    clamped = data.tensor_to_image(torch.tensor([-3.0, 0.0, 5.0]).view(3, 1, 1))
    assert clamped.tolist() == [[[0, 128, 255]]]


# -----------------------------------------------------------------------------
# Reading any picture file

# A known 8-bit greyscale picture (8 rows, 12 columns) holding both ends of the range, so
# every range rule of read_picture sees its full scale.
PICTURE = np.random.default_rng(0).integers(0, 256, (8, 12)).astype(np.uint8)
PICTURE[0, :2] = 0, 255

# file name -> (the same picture stored in another PIL mode, the mode PIL reads it back as)
GREY_FILES = {
    "8-bit.png": (lambda: PICTURE, "L"),
    "16-bit.png": (lambda: PICTURE.astype(np.uint16) * 257, "I;16"),
    "float-0-1.tif": (lambda: PICTURE.astype(np.float32) / 255, "F"),
    "float-0-255.tif": (lambda: PICTURE.astype(np.float32), "F"),
    "float-0-65535.tif": (lambda: PICTURE.astype(np.float32) * 257, "F"),
    "int32-0-255.tif": (lambda: PICTURE.astype(np.int32), "I"),
    "int32-0-65535.tif": (lambda: PICTURE.astype(np.int32) * 257, "I"),
    "int32-full.tif": (lambda: (PICTURE.astype(np.int64) * (2 ** 31 - 1) // 255).astype(np.int32), "I"),
}


@pytest.mark.parametrize("name", GREY_FILES)
def test_read_picture_scales_high_bit_depths(tmp_path, name):
    values, mode = GREY_FILES[name]
    Image.fromarray(values()).save(tmp_path / name)
    assert Image.open(tmp_path / name).mode == mode   # the test really exercises this mode
    picture = pictures.read_picture(tmp_path / name)
    assert picture.shape == (8, 12, 3) and picture.dtype == np.uint8
    assert (picture[..., 0] == picture[..., 2]).all()
    # within one level of the 8-bit picture: scaled, not clipped (clipped 16-bit reads ~all white)
    assert np.abs(picture[..., 0].astype(int) - PICTURE).max() <= 1
    assert abs(picture.mean() - PICTURE.mean()) < 1


def half_transparent(mode, colour):
    """An 8x8 picture whose left half is fully transparent: colour on the right only."""
    image = Image.new(mode, (8, 8), colour)
    alpha = np.full((8, 8), 255, np.uint8)
    alpha[:, :4] = 0
    image.putalpha(Image.fromarray(alpha))
    return image


def palette_picture(transparent):
    """Left half palette entry 1 (red), right half entry 0 (blue); red transparent if asked."""
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 255, 255, 0, 0])
    image.paste(1, (0, 0, 4, 8))
    if transparent:
        image.info["transparency"] = 1
    return image


# file name -> (how to make it, the RGB it must read back as, tolerance in levels)
COLOUR_FILES = {
    "rgba.png": (lambda: half_transparent("RGB", (0, 0, 200)), [(255,) * 3] * 4 + [(0, 0, 200)] * 4, 0),
    "la.png": (lambda: half_transparent("L", 30), [(255,) * 3] * 4 + [(30,) * 3] * 4, 0),
    "palette-transparent.png": (lambda: palette_picture(True), [(255,) * 3] * 4 + [(0, 0, 255)] * 4, 0),
    "palette.png": (lambda: palette_picture(False), [(255, 0, 0)] * 4 + [(0, 0, 255)] * 4, 0),
    "bilevel.png": (lambda: Image.new("1", (8, 8), 1), [(255,) * 3] * 8, 0),
    "cmyk.jpg": (lambda: Image.new("CMYK", (8, 8), (0, 255, 255, 0)), [(255, 0, 0)] * 8, 8),
}


@pytest.mark.parametrize("name", COLOUR_FILES)
def test_read_picture_colour_modes_and_transparency(tmp_path, name):
    make, row, tolerance = COLOUR_FILES[name]
    make().save(tmp_path / name)
    picture = pictures.read_picture(tmp_path / name)
    assert picture.shape == (8, 8, 3) and picture.dtype == np.uint8
    assert np.abs(picture.astype(int) - np.array(row)).max() <= tolerance


def test_read_picture_composites_partial_transparency_on_white(tmp_path):
    Image.new("RGBA", (2, 2), (0, 0, 0, 128)).save(tmp_path / "half.png")   # black at half opacity
    assert (np.abs(pictures.read_picture(tmp_path / "half.png").astype(int) - 127) <= 1).all()


def write_truncated_png(path):
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3)).astype(np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:2000])


def write_bomb(path):
    """A picture over PIL's size limit (the tests set Image.MAX_IMAGE_PIXELS to 100)."""
    Image.new("RGB", (32, 32)).save(path)


# file name -> how to make it; each must give a one-line ValueError naming it
UNREADABLE = {
    "truncated.png": write_truncated_png,
    "text.png": lambda path: path.write_text("this is not a png"),
    "a folder.png": lambda path: path.mkdir(),
    "missing.png": lambda path: None,
    "bomb.png": write_bomb,
}


@pytest.mark.parametrize("name", UNREADABLE)
def test_read_picture_unreadable_file_is_one_line_value_error(tmp_path, monkeypatch, name):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)   # 32x32 is over twice that: an error
    UNREADABLE[name](tmp_path / name)
    with pytest.raises(ValueError) as caught:
        pictures.read_picture(tmp_path / name)
    message = str(caught.value)
    assert message.startswith(f"cannot read image {tmp_path / name} (")
    assert message.endswith("): give a PNG or JPEG file") and "\n" not in message


def test_read_picture_names_a_decompression_bomb(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    write_bomb(tmp_path / "bomb.png")
    with pytest.raises(ValueError, match="DecompressionBombError"):
        pictures.read_picture(tmp_path / "bomb.png")


# -----------------------------------------------------------------------------
# A user's own folder

def write_folder(folder, lines):
    Image.new("RGB", (40, 50), (255, 0, 0)).save(folder / "red.png")
    Image.new("L", (32, 32), 255).save(folder / "grey.png")
    Image.fromarray(np.full((32, 32), 128 * 257, np.uint16)).save(folder / "grey16.png")
    # a wide image: only its middle half is green, so the centre crop must be all green
    wide = np.zeros((32, 64, 3), np.uint8)
    wide[:, :16] = (255, 0, 0)
    wide[:, 16:48] = (0, 255, 0)
    wide[:, 48:] = (0, 0, 255)
    (folder / "sub").mkdir()
    Image.fromarray(wide).save(folder / "sub" / "wide.png")
    (folder / "corrupt.png").write_bytes(b"this is not a png")
    write_truncated_png(folder / "truncated.png")
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")


GOOD_LINES = [
    json.dumps({"image": "red.png", "caption": "a red picture"}),
    json.dumps({"image": "corrupt.png", "caption": "broken"}),
    "",
    json.dumps({"image": "grey.png", "caption": "a white picture"}),
    json.dumps({"image": "truncated.png", "caption": "cut short"}),
    json.dumps({"image": "grey16.png", "caption": "   "}),                  # an empty caption
    json.dumps({"image": "missing.png", "caption": "not there"}),
    json.dumps({"image": "sub/wide.png", "caption": "green in the middle"}),
    json.dumps({"image": "grey16.png", "caption": "a 16-bit grey picture"}),
]


def test_load_caption_folder(tmp_path):
    write_folder(tmp_path, GOOD_LINES)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = pictures.load_caption_folder(tmp_path, data.IMAGE_SIZE)
    assert len(caught) == 1   # every skipped line counted in one warning
    message = str(caught[0].message)
    assert message.startswith("skipped 4 of 8 images: 3 could not be read (first: cannot read image ")
    assert "corrupt.png" in message and "1 have an empty caption (first: grey16.png)" in message
    assert [text for _, text in items] == [
        "a red picture", "a white picture", "green in the middle", "a 16-bit grey picture"]
    for image, _ in items:
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert (items[0][0] == (255, 0, 0)).all()
    assert (items[1][0] == 255).all()
    assert (items[2][0] == (0, 255, 0)).all()
    assert (items[3][0] == 128).all()   # scaled from 16 bits, not clipped to white
    with pytest.warns(UserWarning, match="skipped 4 of 8"):
        assert pictures.load_caption_folder(tmp_path, resolution=16)[0][0].shape == (16, 16, 3)


def test_load_caption_folder_skips_a_decompression_bomb(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    Image.new("RGB", (8, 8), (0, 0, 255)).save(tmp_path / "small.png")   # 64 pixels: under the limit
    write_bomb(tmp_path / "bomb.png")
    (tmp_path / "captions.jsonl").write_text(
        json.dumps({"image": "bomb.png", "caption": "too big"}) + "\n"
        + json.dumps({"image": "small.png", "caption": "blue"}) + "\n")
    with pytest.warns(UserWarning, match=r"skipped 1 of 2 images: 1 could not be read .*bomb\.png"):
        items = pictures.load_caption_folder(tmp_path, data.IMAGE_SIZE)
    assert [text for _, text in items] == ["blue"] and (items[0][0] == (0, 0, 255)).all()


def test_load_caption_folder_all_captions_empty(tmp_path):
    write_folder(tmp_path, [json.dumps({"image": "red.png", "caption": ""}),
                            json.dumps({"image": "grey.png", "caption": " \t"})])
    with pytest.raises(ValueError, match=r"^every caption in .*captions\.jsonl is empty: "
                                         r"give each picture a caption$"):
        pictures.load_caption_folder(tmp_path, data.IMAGE_SIZE)


@pytest.mark.parametrize("bad_line, complaint", [
    ("{not json", "not valid JSON"),
    (json.dumps({"image": "red.png"}), "'caption'"),
    (json.dumps({"caption": "x", "image": 3}), "'image'"),
    (json.dumps(["red.png", "x"]), "JSON object"),
])
def test_load_caption_folder_malformed_line(tmp_path, bad_line, complaint):
    write_folder(tmp_path, GOOD_LINES + [bad_line])
    with pytest.raises(ValueError, match=f"captions.jsonl line {len(GOOD_LINES) + 1}: .*{re.escape(complaint)}"):
        pictures.load_caption_folder(tmp_path, data.IMAGE_SIZE)


def test_load_caption_folder_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="captions.jsonl"):
        pictures.load_caption_folder(tmp_path / "nowhere", data.IMAGE_SIZE)
    with pytest.raises(FileNotFoundError, match="captions.jsonl"):
        pictures.load_caption_folder(tmp_path, data.IMAGE_SIZE)

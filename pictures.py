"""Pictures in and out: reading any picture file, a folder of your own captioned pictures, and
every figure the project draws, each written atomically.

Reference, not the paper: sampling.py, train.py and evaluate.py call these, a reader of
the paper may skip them. In order:

1. reading: `read_picture` (any PIL mode to 8-bit RGB, scaled rather than clipped),
   `read_image` (resized and centre-cropped for the image tokenizer), and
   `load_caption_folder` (train.py --data-dir);
2. writing: `save_picture` and `write_text`, through one atomic write: a temporary file
   beside the target, then a rename, so a full disk or Ctrl-C never leaves a truncated file;
3. figures: grids, MaskGIT film strips, story strips, attention masks, charts, and the
   LFQ sheet.

Read first: data.py.
"""

import json
import math
import os
import textwrap
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from attention import (lm_attention_mask, mmu_attention_mask, omni_attention_mask, picture_blocks,
                       t2i_attention_mask)


# ----------------------------------------------------------------------------------------
# 1. Reading pictures
# ----------------------------------------------------------------------------------------

def read_rgb(path):
    """An image file -> PIL RGB image at its own size (read_picture's rules)."""
    return Image.fromarray(read_picture(path))


def read_image(path, resolution):
    """An image file -> (resolution, resolution, 3) uint8, shorter side resized, centre-cropped."""
    return resize_and_crop(read_rgb(path), resolution)


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


def load_caption_folder(folder, resolution: int) -> list[tuple[np.ndarray, str]]:
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


def stitch_extension(original, generated, direction):
    """Original (H, W, 3) uint8 + the generated canvas -> the picture grown by half a side."""
    h, w = original.shape[:2]
    new_part = {"right": generated[:, w // 2:], "left": generated[:, :w - w // 2],
                "down": generated[h // 2:], "up": generated[:h - h // 2]}[direction]
    if direction == "right":
        return np.concatenate([original, new_part], axis=1)
    if direction == "left":
        return np.concatenate([new_part, original], axis=1)
    if direction == "down":
        return np.concatenate([original, new_part], axis=0)
    return np.concatenate([new_part, original], axis=0)


# ----------------------------------------------------------------------------------------
# 2. Writing: one atomic write for every output
# ----------------------------------------------------------------------------------------

def write_atomically(path, write):
    """Call write(temporary path), then rename the temporary file onto `path`.

    The file appears whole or not at all: a failing write (a full disk, Ctrl-C) leaves the
    old file as it was and no half-written new one. The temporary name holds the process
    id, so two processes never write each other's file. OSError names the path.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    except (OSError, ValueError) as error:
        raise OSError(f"could not write {path} ({str(error).splitlines()[0] if str(error) else type(error).__name__}): "
                      f"free some disk space or choose another place") from None
    finally:
        temporary.unlink(missing_ok=True)


def save_picture(picture, path):
    """Write one uint8 (H, W, 3) picture or a PIL image, atomically, in the format its suffix names."""
    image = picture if isinstance(picture, Image.Image) else Image.fromarray(picture)
    write_atomically(path, lambda temporary: image.save(temporary, format=Image.registered_extensions()
                                                         .get(Path(path).suffix.lower(), "PNG")))


def write_text(path, text):
    """Write a UTF-8 text file, atomically."""
    write_atomically(path, lambda temporary: Path(temporary).write_text(text, encoding="utf-8"))


# ----------------------------------------------------------------------------------------
# 3. Figures
# ----------------------------------------------------------------------------------------

def film_strip(frames, masked, grid, scale=4):
    """MaskGIT step by step: one picture per step, the tokens still masked painted grey.

    frames: (T, H, W, 3) uint8, each step's full guess decoded; masked: (T, grid*grid)
    bool, what stays masked after that step (the model may still change those).
    """
    frames = frames.copy()
    t, h, w, _ = frames.shape
    cell = h // grid
    for frame, hidden in zip(frames, masked.view(t, grid, grid).tolist()):
        for row, cells in enumerate(hidden):
            for col, is_masked in enumerate(cells):
                if is_masked:
                    frame[row * cell:(row + 1) * cell, col * cell:(col + 1) * cell] = 128
    return image_grid(frames, columns=t, scale=scale)


def story_strip(frames, sentences, scale=4, width_chars=26):
    """A story as one PIL picture: the frames (F, H, W, 3) uint8 in a row, enlarged, each
    sentence under its frame in pillow's default font, wrapped to the frame's width."""
    count, h, w, _ = frames.shape
    cell = max(w * scale, 6 * width_chars) + 8
    lines = [textwrap.wrap(sentence, width_chars) for sentence in sentences]
    line_height = 12
    sheet = Image.new("RGB", (count * cell, h * scale + 12 + line_height * max(map(len, lines))), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for k, (frame, text) in enumerate(zip(frames, lines)):
        left = k * cell + (cell - w * scale) // 2
        sheet.paste(Image.fromarray(frame).resize((w * scale, h * scale), Image.NEAREST), (left, 4))
        for row, line in enumerate(text):
            draw.text((k * cell + 4, h * scale + 8 + row * line_height), line, fill="black", font=font)
    return sheet


def image_grid(images, columns=None, scale=4):
    """Tile (B, H, W, 3) uint8 pictures into one enlarged PIL image (nearest-neighbour)."""
    b, h, w, _ = images.shape
    columns = columns or math.ceil(math.sqrt(b))
    rows = math.ceil(b / columns)
    sheet = np.zeros((rows * (h + 2), columns * (w + 2), 3), dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        sheet[r * (h + 2) + 1:r * (h + 2) + 1 + h, c * (w + 2) + 1:c * (w + 2) + 1 + w] = image
    grid = Image.fromarray(sheet)
    return grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)


def show_mask(allowed, tokens=None):
    """Render one (L, L) mask as text: '#' may attend, '.' may not."""
    rows = []
    for i, row in enumerate(allowed.tolist()):
        label = f"{tokens[i]:>7} " if tokens is not None else ""
        rows.append(label + " ".join("#" if cell else "." for cell in row))
    return "\n".join(rows)


def mask_picture(allowed, tokens, cell=22):
    """Draw one (L, L) mask as a PIL image: dark = may attend, light = may not.

    Rows (who is looking) are labelled on the left, columns (who is looked at) on top.
    """
    length = allowed.shape[0]
    margin = 8 * max(len(t) for t in tokens) + 10
    image = Image.new("RGB", (margin + length * cell + 1, margin + length * cell + 1), "white")
    draw = ImageDraw.Draw(image)
    for i, row in enumerate(allowed.tolist()):
        draw.text((4, margin + i * cell + 5), tokens[i], fill="black")
        for j, may_attend in enumerate(row):
            box = [margin + j * cell, margin + i * cell, margin + (j + 1) * cell, margin + (i + 1) * cell]
            draw.rectangle(box, fill=(40, 90, 200) if may_attend else (235, 235, 235), outline="white")
    for j, token in enumerate(tokens):                    # column labels, written upwards
        label = Image.new("RGB", (margin - 4, cell), "white")
        ImageDraw.Draw(label).text((2, 5), token.rjust(len(max(tokens, key=len))), fill="black")
        image.paste(label.rotate(90, expand=True), (margin + j * cell, 2))
    return image


# The example masks of `python attention.py`, on a toy vocabulary of nine ids.
MASK_NAMES = {0: "[PAD]", 1: "<soi>", 2: "<eoi>", 3: "<t2i>", 4: "<mmu>", 5: "BOS", 6: "word", 7: "img", 8: "<t2v>"}


def mask_examples():
    """The masks of Fig. 5 and a story's on MASK_NAMES' ids: [(name, title, ids (1, L), mask (1, L, L))]."""
    pad, soi, eoi, t2i, mmu, bos, word, img, t2v = range(9)
    t2i_ids = torch.tensor([[pad, pad, t2i, bos, word, word, bos, soi, img, img, img, eoi]])
    mmu_ids = torch.tensor([[mmu, soi, img, img, img, eoi, bos, word, word, word]])
    lm_ids = torch.tensor([[bos, word, word, word, bos, pad, pad]])
    frame, sentence = [soi, img, img, eoi], [bos, word, bos, pad]     # sentence slots of width 4
    story_ids = torch.tensor([[t2v, *sentence, *frame, *sentence, *frame, *sentence, *frame]])
    return [
        ("t2i", "t2i: causal caption, bidirectional image (pads hidden)",
         t2i_ids, t2i_attention_mask(t2i_ids, pad, soi, eoi)),
        ("mmu", "mmu: bidirectional <mmu>+image prefix, causal question/answer",
         mmu_ids, mmu_attention_mask(mmu_ids, pad, eoi)),
        ("lm", "lm: causal", lm_ids, lm_attention_mask(lm_ids, pad)),
        ("story", "story: three pictures, each after its sentence (the same rule)",
         story_ids, omni_attention_mask(picture_blocks(story_ids, soi, eoi), story_ids == pad)),
    ]


CURVE_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207)]


def line_chart(series, title, x_label, y_low, y_high, size=(420, 260)):
    """A PIL line chart of {name: (xs, ys)}: axes with their ranges written on, and a legend."""
    width, height = size
    left, right, top, bottom = 44, 10, 22, 30
    font = ImageFont.load_default(size=11)     # scalable: the tiny bitmap default drops spaces
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 4), title, fill="black", font=font)
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    x_high = max((max(xs) for xs, _ in series.values() if len(xs)), default=1) or 1
    for y_value in (y_low, (y_low + y_high) / 2, y_high):
        y = height - bottom - (y_value - y_low) / (y_high - y_low) * (height - top - bottom)
        draw.text((2, y - 6), f"{y_value:g}", fill="black", font=font)
    draw.text((left, height - bottom + 4), "0", fill="black", font=font)
    draw.text((width - right - 90, height - bottom + 4), f"{x_high:,.4g} {x_label}", fill="black", font=font)
    for k, (name, (xs, ys)) in enumerate(series.items()):
        colour = CURVE_COLOURS[k % len(CURVE_COLOURS)]
        points = [(left + x / x_high * (width - left - right),
                   height - bottom - (min(max(y, y_low), y_high) - y_low) / (y_high - y_low) * (height - top - bottom))
                  for x, y in zip(xs, ys)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for point in points if len(points) < 12 else []:
            draw.ellipse([point[0] - 2, point[1] - 2, point[0] + 2, point[1] + 2], fill=colour)
        draw.text((width - right - 150, top + 4 + 12 * k), name, fill=colour, font=font)
    return image


def curves_picture(history, scores, score_labels):
    """Losses per objective over steps (left) and held-out scores over training TFLOP (right).

    score_labels: {score name: its label in the legend} (evaluate.SCORES)."""
    smooth = 10
    losses = {}
    for kind in (history[0] if history else {}):
        values = [h[kind] for h in history]
        averaged = [np.mean(values[max(0, i - smooth + 1):i + 1]) for i in range(len(values))]
        losses[f"{kind} loss"] = (list(range(1, len(values) + 1)), averaged)
    top = max((max(ys) for _, ys in losses.values()), default=1.0)
    charts = [line_chart(losses, f"training losses ({smooth}-step average)", "steps", 0, round(top + 0.5))]
    if scores:
        tflop = [s["tflop"] for s in scores]
        series = {label: (tflop, [100 * s[name] for s in scores]) for name, label in score_labels.items()
                  if name in scores[0]}
        charts.append(line_chart(series, "held-out scores (%)", "TFLOP", 0, 100))
    sheet = Image.new("RGB", (sum(c.width for c in charts), charts[0].height), "white")
    for i, chart in enumerate(charts):
        sheet.paste(chart, (i * charts[0].width, 0))
    return sheet


def code_colours(codes):
    """A fixed, arbitrary colour per code id, so equal codes look equal: uint8 (..., 3)."""
    return ((codes[..., None] * torch.tensor([2654435761, 40503, 2246822519])) >> 7) % 200 + 40


def lfq_picture(images, codes, rebuilt):
    """Originals (top), their code grids (middle; one colour per code) and reconstructions.

    images and rebuilt: uint8 (B, H, W, 3); codes (B, h*w). Returns a uint8
    (3*H + 4, B*W + B - 1, 3) sheet.
    """
    grid, side = math.isqrt(codes.shape[1]), images.shape[1]
    cells = code_colours(codes).view(-1, grid, grid, 3).to(torch.uint8)
    cells = cells.repeat_interleave(side // grid, 1).repeat_interleave(side // grid, 2).numpy()
    rows = [torch.from_numpy(row) for row in (images, cells, rebuilt)]
    sheet = torch.full((3 * side + 4, len(images) * (side + 1) - 1, 3), 255, dtype=torch.uint8)
    for r, row in enumerate(rows):
        for i, picture in enumerate(row):
            sheet[r * (side + 2):r * (side + 2) + side, i * (side + 1):i * (side + 1) + side] = picture
    return sheet.numpy()



"""The released CLIP-ViT variant (showlab/show-o-w-clip-vit): same weights in, same numbers out.

The fixture folder (SHOWO_CLIP_REFERENCE_DIR, default: the copy in tests/fixtures/official_clip)
holds a random-weight checkpoint of the variant in the released layout (clip/: a whole
CLIPModel download; showo/: Phi + mm_projector; phi/), a picture and reference.pt, what the
published code produced for them (MANIFEST.json lists it). Every size is read from those
files, so any folder of the same format passes too (other widths, layer counts, picture
shapes, a pytorch_model.bin CLIP download). MAGVIT-v2 plays no part in understanding here;
convert still needs one to draw pictures: the parity fixture's (SHOWO_REFERENCE_DIR, as in
test_parity.py).
"""

import json
import os
import shutil
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from explain import expect_close, expect_equal
from PIL import Image

import bench
import sampling
import train
from bench import write_released_clip
from bpe import TextTokenizer
from checkpoint import (RELEASED_CLIP_QUESTION_TEMPLATE, RELEASED_SYSTEM_PROMPT, load_checkpoint, load_released_clip,
                        load_released_showo, load_vision_tower, main, released_clip_config)
from commands import phrase_question
from model import ShowoConfig
from readers import (ClipConfig, answer_with_clip, clip_feature_slots, clip_pixels, clip_understanding_mask,
                     embed_with_features, mmu_vit_sequences)
from sampling import decode_tokens, next_token_function
from tensor_files import read_weights

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TOLERANCE = 1e-4


def reference_dir():
    """The fixture folder: $SHOWO_CLIP_REFERENCE_DIR, else the copy shipped with the tests."""
    directory = Path(os.environ.get("SHOWO_CLIP_REFERENCE_DIR", FIXTURES / "official_clip"))
    assert (directory / "reference.pt").is_file(), \
        f"no CLIP parity fixture at {directory}: set SHOWO_CLIP_REFERENCE_DIR to one"
    return directory


def magvit_dir():
    """The image tokenizer the CLIP fixture pairs with (MANIFEST.json: official_tiny/magvit)."""
    return Path(os.environ.get("SHOWO_REFERENCE_DIR", FIXTURES / "official_tiny")) / "magvit"


@pytest.fixture(scope="module")
def ref():
    return torch.load(reference_dir() / "reference.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def showo():
    return load_released_showo(reference_dir() / "showo", reference_dir() / "phi")


@pytest.fixture(scope="module")
def tower(showo):
    return load_released_clip(reference_dir() / "clip", showo.cfg.clip_width)


def assert_close(ours, expected, what):
    assert ours.shape == expected.shape, f"{what}: shape {tuple(ours.shape)} vs {tuple(expected.shape)}"
    worst = (ours - expected).abs().max().item()
    assert worst <= TOLERANCE, f"{what}: max abs difference {worst:.2e} > {TOLERANCE}"


def reference_sequence(ref, showo):
    """The reference's prompt rebuilt by mmu_vit_sequences from its system and question ids."""
    prefix, suffix = ref["mmu_vit.prefix_ids"][0].tolist(), ref["mmu_vit.suffix_ids"][0].tolist()
    system, question = prefix[1:-1], suffix[1:]               # between <|mmu|> and <|soi|>; after <|eoi|>
    ids = mmu_vit_sequences(system, [question], ref["clip.projected"].shape[1], showo.cfg)
    return ids


SMALL = ClipConfig(image_size=20, patch_size=4, resize_to=20)


@pytest.mark.lesson10
@pytest.mark.parametrize("size", [(20, 20), (50, 30), (30, 47)])
def test_clip_preprocessing_normalises_per_channel(size, tmp_path):
    """A picture of one colour, of any shape, gives (c / 255 - mean) / std everywhere."""
    colour = (200, 100, 30)
    Image.new("RGB", size, colour).save(tmp_path / "flat.png")
    pixels = clip_pixels(tmp_path / "flat.png", SMALL)
    expect_equal((tuple(pixels.shape), pixels.dtype), ((1, 3, 20, 20), torch.float32), "shape and dtype",
                 "(1, 3, S, S) float32: channels first, one picture")
    expected = (torch.tensor(colour) / 255 - torch.tensor(SMALL.image_mean)) / torch.tensor(SMALL.image_std)
    as_minus_one_to_one = torch.tensor(colour) / 127.5 - 1
    means = pixels[0].mean(dim=(1, 2))
    expect_close(pixels[0], means[:, None, None].expand(3, 20, 20), "every pixel of a picture of one colour",
                 "each channel must be one value everywhere: turn (S, S, 3) into (3, S, S) with permute(2, 0, 1); "
                 "a reshape mixes the channels", atol=1e-2)
    hint = ("values in [-1, 1] (x / 127.5 - 1) are MAGVIT's range; CLIP takes x / 255, then (x - mean) / std "
            "per channel with CLIP's mean and std" if torch.allclose(means, as_minus_one_to_one, atol=1e-2)
            else "(x / 255 - mean) / std per channel, with CLIP's mean and std")
    expect_close(means, expected, f"the channel means of a flat {colour} picture", hint, atol=1e-3)


@pytest.mark.lesson10
def test_clip_preprocessing_rounds_the_longer_side_down(tmp_path):
    """The longer side becomes floor(resize_to * long / short), as CLIP's processor computes
    it: 20 * 61 / 24 = 50.83 -> 50 (rounding would give 51, and a crop one pixel off)."""
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 256, (24, 61, 3), dtype=np.uint8)
    Image.fromarray(picture).save(tmp_path / "wide.png")
    mean, std = torch.tensor(SMALL.image_mean)[:, None, None], torch.tensor(SMALL.image_std)[:, None, None]

    def prepared(width, resample=Image.Resampling.BICUBIC):
        resized = np.asarray(Image.fromarray(picture).resize((width, 20), resample))
        left = (width - 20) // 2
        return ((torch.from_numpy(resized[:, left:left + 20].copy()).permute(2, 0, 1).float() / 255) - mean) / std
    got = clip_pixels(tmp_path / "wide.png", SMALL)[0]
    known_mistakes = {
        "these are the pixels of a resize to 51 x 20: the longer side is int(20 * 61 / 24) = 50, rounded down":
            prepared(51),
        "these are the pixels of a BILINEAR resize: CLIP resizes with Image.Resampling.BICUBIC":
            prepared(50, Image.Resampling.BILINEAR),
        "the picture was squashed to 20 x 20: resize the SHORTER side to 20, keeping the aspect ratio, then cut "
        "the centre": prepared(20)}
    hint = next((why for why, pixels in known_mistakes.items() if torch.allclose(got, pixels, atol=1e-5)),
                "resize to 50 x 20 (bicubic, the longer side rounded down), then cut the centre 20 x 20")
    expect_close(got, prepared(50), "the pixels of a 61 x 24 picture", hint)


@pytest.mark.lesson10
@pytest.mark.parametrize("landscape", [True, False])
def test_clip_preprocessing_resizes_the_shorter_side_and_cuts_the_centre(landscape, tmp_path):
    """A picture in three bands along its long side: red, green, blue. The shorter side
    becomes 20 and the centre 20 x 20 is cut out: the green middle band fills most of it,
    red and blue only its two edges, which they share equally."""
    long, short = 90, 30                                 # -> 60 x 20 (or 20 x 60); the crop keeps 20..40
    bands = np.zeros((short, long, 3), dtype=np.uint8)
    for k, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        bands[:, k * 30:(k + 1) * 30] = colour
    picture = bands if landscape else bands.transpose(1, 0, 2)
    Image.fromarray(np.ascontiguousarray(picture)).save(tmp_path / "bands.png")
    pixels = clip_pixels(tmp_path / "bands.png", SMALL)[0]                # (3, 20, 20)
    std, mean = torch.tensor(SMALL.image_std)[:, None, None], torch.tensor(SMALL.image_mean)[:, None, None]
    along = (pixels * std + mean).mean(dim=1 if landscape else 2)        # (3, 20) in [0, 1], along the long side
    red, green, blue = along
    crop_idea = ("resize the SHORTER side to resize_to, keeping the aspect ratio, then cut the centre S x S "
                 "(squashing the picture to a square keeps all three bands)")
    expect_equal(bool((green > 0.9).all()), True, "the green middle band across the crop", crop_idea)
    expect_close(torch.stack([red[10], blue[10]]), torch.zeros(2), "red and blue in the middle of the crop",
                 crop_idea, atol=0.02)
    expect_equal(bool(red[0] > 0.02 and abs(float(red[0] - blue[-1])) < 0.01), True,
                 f"the crop's two edges (red {red[0]:.3f}, blue {blue[-1]:.3f})",
                 "centred: the red and the blue band bleed in alike at the two edges")


@pytest.mark.lesson10
def test_clip_preprocessing_gives_the_reference_pixels(ref, tower):
    """Last of lesson 10's pixel checks (the ones above say what is wrong): the published
    processor's own pixels for the fixture's picture."""
    expect_close(clip_pixels(reference_dir() / "image.png", tower.cfg), ref["clip.pixel_values"],
                 "the fixture picture's pixels", "as CLIP's processor: shorter side to 336 (bicubic, the longer "
                 "side rounded down), centre crop, x / 255, (x - mean) / std per channel", atol=1e-4)


def test_features_and_projected_features(ref, showo, tower):
    with torch.no_grad():
        features = tower(ref["clip.pixel_values"])
        assert_close(features, ref["clip.features"], "CLIP features")
        assert_close(showo.mm_projector(ref["clip.features"]), ref["clip.projected"], "projected features")


def test_sequence_mask_and_logits(ref, showo):
    cfg, ids = showo.cfg, reference_sequence(ref, showo)
    prefix, suffix = ref["mmu_vit.prefix_ids"], ref["mmu_vit.suffix_ids"]
    features = ref["clip.projected"].shape[1]
    assert ids[0, :prefix.shape[1]].tolist() == prefix[0].tolist()
    assert ids[0, prefix.shape[1] + features:].tolist() == suffix[0].tolist()
    allowed = clip_understanding_mask(showo.cfg)(ids)
    assert torch.equal(allowed[0], ref["mmu_vit.allowed"])
    with torch.no_grad():
        logits = showo(embed_with_features(showo, ids, ref["clip.projected"]), allowed)
    assert_close(logits, ref["mmu_vit.logits"], "logits")
    assert cfg.soi_id == prefix[0, -1] and cfg.eoi_id == suffix[0, 0]


@pytest.mark.parametrize("naive", [True, False], ids=["naive", "kv-cached"])
def test_greedy_answer_tokens(ref, showo, naive):
    ids = reference_sequence(ref, showo)
    embed = partial(embed_with_features, showo, features=ref["clip.projected"])
    expected = ref["mmu_vit.greedy_next8"].view(1, -1)
    with torch.no_grad():
        # The reference picks from the whole vocabulary and never stops early.
        answer = decode_tokens(next_token_function(showo, clip_understanding_mask(showo.cfg), naive, embed), ids,
                               expected.shape[1])
    assert torch.equal(answer, expected), f"greedy {answer.tolist()} vs {expected.tolist()}"


def test_a_pytorch_model_bin_clip_download_gives_the_same_features(ref, showo, tmp_path):
    """The same CLIP weights saved as pytorch_model.bin (torch.save of the state dict)."""
    source = reference_dir() / "clip"
    for name in ("config.json", "preprocessor_config.json"):
        shutil.copy(source / name, tmp_path / name)
    torch.save({name: stored.load() for name, stored in read_weights(source).items()}, tmp_path / "pytorch_model.bin")
    tower = load_released_clip(tmp_path, showo.cfg.clip_width)
    with torch.no_grad():
        assert_close(tower(clip_pixels(reference_dir() / "image.png", tower.cfg)), ref["clip.features"], "features")


def tokenizer_folder(tmp_path):
    """A small BPE standing in for Phi-1.5's files, its ids filled up to the fixture's text
    vocabulary with added tokens, so that every text id an answer may hold can be decoded."""
    folder = tmp_path / "phi"
    folder.mkdir()
    (folder / "config.json").write_text((reference_dir() / "phi" / "config.json").read_text())
    llm_vocab_size = json.loads((reference_dir() / "showo" / "config.json").read_text())["llm_vocab_size"]
    bpe = TextTokenizer.train(["what shape is at the top left?"] * 3, min(llm_vocab_size, 260))
    fillers = {f"<|filler {i}|>": i for i in range(len(bpe), llm_vocab_size)}
    TextTokenizer(bpe.vocab, bpe.merges, {**bpe.added_tokens, **fillers}).save(folder)
    return folder


def convert_args(tmp_path, clip_dir, out):
    return ["convert", "--showo", str(reference_dir() / "showo"), "--magvit", str(magvit_dir()),
            "--tokenizer", str(tokenizer_folder(tmp_path)), "--out", str(out),
            *(["--clip", str(clip_dir)] if clip_dir else [])]


def test_convert_with_clip_then_load_and_ask_on_the_command_line(ref, tmp_path, capsys):
    out = tmp_path / "showo_clip.pt"
    main(convert_args(tmp_path, reference_dir() / "clip", out))
    model, vq, text_tokenizer, extra = load_checkpoint(out)
    tower = load_vision_tower(out)
    assert extra["question_template"] == RELEASED_CLIP_QUESTION_TEMPLATE
    assert extra["system_prompt"] == RELEASED_SYSTEM_PROMPT
    with torch.no_grad():                               # the stored tower and projector are the released ones
        assert_close(model.mm_projector(tower(ref["clip.pixel_values"])), ref["clip.projected"], "stored")
    capsys.readouterr()
    question = "what shape is at the top left?"
    common = ["--ckpt", str(out), "--image", str(reference_dir() / "image.png"), "--question", question,
              "--device", "cpu", "--max-new-tokens", "5"]
    sampling.main(common)
    printed = capsys.readouterr().out.strip()
    sampling.main([*common, "--naive"])
    assert capsys.readouterr().out.strip() == printed
    question_ids = phrase_question(text_tokenizer, model.cfg, extra["question_template"], question)
    [answer] = answer_with_clip(model, tower, clip_pixels(reference_dir() / "image.png", tower.cfg),
                                text_tokenizer.encode(extra["system_prompt"]), [question_ids], 5)
    assert printed == (text_tokenizer.decode(answer).strip() or "(no answer: the model ended it at once)")
    # train.py trains on codes or its own readers: fine-tuning this variant would drop its tower
    message = one_line_error(lambda: train.main(["--preset", "micro", "--init", str(out),
                                                 "--out-dir", str(tmp_path / "tuned")]))
    assert "is the CLIP-ViT variant" in message and "MAGVIT-only" in message


def one_line_error(job):
    with pytest.raises(SystemExit) as stop:
        job()
    message = str(stop.value)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


def test_the_clip_variant_without_clip_is_one_clear_error(tmp_path):
    message = one_line_error(lambda: main(convert_args(tmp_path, None, tmp_path / "x.pt")))
    assert "w_clip_vit" in message and "--clip" in message


def test_a_clip_folder_of_the_wrong_width_is_one_clear_error(tmp_path):
    clip_dir = tmp_path / "clip"
    shutil.copytree(reference_dir() / "clip", clip_dir)
    config = json.loads((clip_dir / "config.json").read_text())
    width = config["vision_config"]["hidden_size"]
    config["vision_config"]["hidden_size"] = 2 * width
    (clip_dir / "config.json").write_text(json.dumps(config))
    message = one_line_error(lambda: main(convert_args(tmp_path, clip_dir, tmp_path / "x.pt")))
    assert f"{2 * width} wide" in message and f"takes {width}" in message


def test_a_picture_that_cannot_be_read_is_one_clear_error(tmp_path):
    out = tmp_path / "showo_clip.pt"
    main(convert_args(tmp_path, reference_dir() / "clip", out))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a picture at all")
    message = one_line_error(lambda: sampling.main(["--ckpt", str(out), "--image", str(broken), "--question",
                                                    "what is it?", "--device", "cpu"]))
    assert str(broken) in message


def test_the_benchmark_writer_makes_a_download_that_loads(showo, tmp_path):
    """bench.py loading's CLIP writer, at a small size: what it writes reads back exactly."""
    small = ClipConfig(image_size=28, patch_size=14, hidden_size=showo.cfg.clip_width, num_layers=1, num_heads=2,
                       intermediate_size=8, resize_to=32)
    torch.manual_seed(0)
    write_released_clip(tmp_path, small)
    assert released_clip_config(tmp_path) == small
    stored = read_weights(tmp_path)
    assert "vision_model.encoder.layers.1.mlp.fc1.weight" in stored     # the last layer is written ...
    tower = load_released_clip(tmp_path, showo.cfg.clip_width)
    assert len(tower.layers) == 1                                        # ... and never loaded
    assert torch.equal(tower.layers[0].q.weight, stored["vision_model.encoder.layers.0.self_attn.q_proj.weight"].load())
    assert tower(torch.zeros(1, 3, 28, 28)).shape == (1, 4, showo.cfg.clip_width)


def test_bench_loading_steps_run_on_the_fixture_layout(tmp_path):
    """bench.py loading --clip, every step, on the fixture's sizes instead of the released ones."""
    for part, source in (("showo", reference_dir() / "showo"), ("clip", reference_dir() / "clip"),
                         ("magvit", magvit_dir())):
        (tmp_path / part).symlink_to(source.resolve())
    tokenizer_folder(tmp_path)                          # tmp_path / "phi"
    results = {step: bench.loading_job(step, tmp_path, clip=True)[1]
               for step in ["convert", "load fp32", "picture", "answer"]}
    assert results["convert"].endswith("GB written") and results["load fp32"].endswith("GB of weights")
    assert results["picture"].startswith("(1, 3,") and results["answer"].endswith("answer tokens")
    assert load_vision_tower(tmp_path / "showo.pt").cfg == released_clip_config(tmp_path / "clip")


def test_the_released_prompt_layout_with_phi_tokens():
    """inference_mmu.py's CLIP prompt: <|mmu|>, 28 system-prompt ids, <|soi|>, 576 features, <|eoi|>, question."""
    gpt2 = TextTokenizer.from_files(FIXTURES / "gpt2_bpe")
    cfg = ShowoConfig()                                     # the released vocabulary layout
    system = gpt2.encode(RELEASED_SYSTEM_PROMPT)
    assert len(system) == 28                                # the released SYSTEM_PROMPT_LEN
    question = phrase_question(gpt2, cfg, RELEASED_CLIP_QUESTION_TEMPLATE, "what is this?")
    # USER : ' what' ' is' ' this' ? ' ASS' IST ANT :   (no newline, unlike the MAGVIT path)
    assert question == [29904, 25, 644, 318, 428, 30, 24994, 8808, 8643, 25]
    ids = mmu_vit_sequences(system, [question], ClipConfig().num_features, cfg)
    assert ids[0, 0] == cfg.mmu_id and ids[0, 29] == cfg.soi_id and ids[0, 29 + 577] == cfg.eoi_id
    assert ids[0, 1:29].tolist() == system and ids[0, 29 + 578:].tolist() == question
    slots = clip_feature_slots(ids, cfg.soi_id, cfg.eoi_id)[0]
    assert slots.sum() == 576 and slots[30:606].all()

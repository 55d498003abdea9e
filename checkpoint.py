"""File formats: the released downloads, and this project's one-file checkpoint (nanoGPT's
`from_pretrained`, for Show-o).

Show-o's weights come as three downloads, four for the CLIP-ViT variant (docs/checkpoints.md
has the full layout):

* `showlab/show-o` (or `show-o-512x512`): config.json (the vocabulary) and the
  transformer's weights in `pytorch_model.bin` (a torch pickle) or `*.safetensors`,
  possibly sharded with an `*.index.json`;
* `showlab/magvitv2`: the image tokenizer, config.json and `*.safetensors`;
* `microsoft/phi-1_5`: config.json (the transformer's sizes) and the BPE files;

and, for the CLIP-ViT variant (`showlab/show-o-w-clip-vit`, config `w_clip_vit: true`),
a fourth: `openai/clip-vit-large-patch14-336`, whose vision tower reads the pictures to
understand. This file reads all of them (through tensor_files.py, one tensor at a time)
and writes ONE file, the checkpoint that train.py writes and sampling.py reads. In order:

1. `SHOWO_KEY_TABLE` (and `CLIP_KEY_TABLE`), the visible tables from the released key
   names to ours;
2. filling our networks from stored tensors, and reading released folders
   (`load_released_showo`, `load_released_image_tokenizer`, `load_released_clip`);
3. the one-file checkpoint (`save_checkpoint`, `load_checkpoint`, `load_vision_tower`) and
   `convert` (`python checkpoint.py convert ...`), with what the authors' own inference
   uses: their question template and their sampling settings for each task.

Read first: model.py and tokenizer.py (the networks these weights fill).
Read next: tensor_files.py, or bench.py (its `loading` section measures all of this at full size).
"""

import signal
import sys

if __name__ == "__main__":    # Ctrl-C while the imports below load (seconds): one line, not a traceback
    signal.signal(signal.SIGINT, lambda *_: sys.exit("\ninterrupted while starting: nothing was done"))

import math
import os
import re
from dataclasses import asdict
from pathlib import Path

import torch

from bpe import TextTokenizer
from model import Showo, ShowoConfig
from readers import MMU_FEATURES, ClipConfig, ClipVisionTower
from tensor_files import (CheckpointError, StoredTensor, all_finite, crc32, damaged, first_line, read_config,
                          read_torch_file, read_weights)
from tokenizer import ImageTokenizer, ImageTokenizerConfig


# ----------------------------------------------------------------------------------------
# 1. Released key names -> ours
# ----------------------------------------------------------------------------------------

# Released Show-o key (left) -> our parameter name (right). {i} is the layer number.
# This table is the whole translation; everything else is reading files. (The image
# tokenizer needs none: tokenizer.py names its layers as the release does.)
SHOWO_KEY_TABLE = [
    ("showo.model.embed_tokens.weight",                   "embed.weight"),
    ("showo.model.layers.{i}.input_layernorm.{p}",         "blocks.{i}.norm.{p}"),
    ("showo.model.layers.{i}.self_attn.q_proj.{p}",        "blocks.{i}.attn.q.{p}"),
    ("showo.model.layers.{i}.self_attn.k_proj.{p}",        "blocks.{i}.attn.k.{p}"),
    ("showo.model.layers.{i}.self_attn.v_proj.{p}",        "blocks.{i}.attn.v.{p}"),
    ("showo.model.layers.{i}.self_attn.q_layernorm.{p}",   "blocks.{i}.attn.q_norm.{p}"),
    ("showo.model.layers.{i}.self_attn.k_layernorm.{p}",   "blocks.{i}.attn.k_norm.{p}"),
    ("showo.model.layers.{i}.self_attn.dense.{p}",         "blocks.{i}.attn.out.{p}"),
    ("showo.model.layers.{i}.mlp.fc1.{p}",                 "blocks.{i}.mlp.fc1.{p}"),
    ("showo.model.layers.{i}.mlp.fc2.{p}",                 "blocks.{i}.mlp.fc2.{p}"),
    ("showo.model.final_layernorm.{p}",                    "norm_f.{p}"),
    ("showo.lm_head.{p}",                                  "lm_head.{p}"),
    ("mm_projector.{i}.{p}",                               "mm_projector.{i}.{p}"),   # CLIP-ViT variant only
]

# The same for a CLIP download (transformers' CLIPModel names) -> readers.ClipVisionTower.
CLIP_KEY_TABLE = [
    ("vision_model.embeddings.class_embedding",              "class_embedding"),
    ("vision_model.embeddings.patch_embedding.weight",       "patch_embedding.weight"),
    ("vision_model.embeddings.position_embedding.weight",    "position_embedding.weight"),
    ("vision_model.pre_layrnorm.{p}",                        "pre_norm.{p}"),      # sic: CLIP's spelling
    ("vision_model.encoder.layers.{i}.layer_norm1.{p}",      "layers.{i}.norm1.{p}"),
    ("vision_model.encoder.layers.{i}.self_attn.q_proj.{p}", "layers.{i}.q.{p}"),
    ("vision_model.encoder.layers.{i}.self_attn.k_proj.{p}", "layers.{i}.k.{p}"),
    ("vision_model.encoder.layers.{i}.self_attn.v_proj.{p}", "layers.{i}.v.{p}"),
    ("vision_model.encoder.layers.{i}.self_attn.out_proj.{p}", "layers.{i}.out.{p}"),
    ("vision_model.encoder.layers.{i}.layer_norm2.{p}",      "layers.{i}.norm2.{p}"),
    ("vision_model.encoder.layers.{i}.mlp.fc1.{p}",          "layers.{i}.fc1.{p}"),
    ("vision_model.encoder.layers.{i}.mlp.fc2.{p}",          "layers.{i}.fc2.{p}"),
]
# Keys of a CLIP download that Show-o never uses: the text tower and the two projections
# into CLIP's joint space, and the post-LayerNorm that comes after the features. (Older
# downloads also store the position_ids buffer.)
CLIP_UNUSED = ("text_model.", "text_projection.", "visual_projection.", "logit_scale",
               "vision_model.post_layernorm.", "vision_model.embeddings.position_ids")


def _template_regex(template):
    """'a.{i}.b.{p}' -> regex with named groups i (digits) and p (weight|bias)."""
    pattern = re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)")
    return re.compile(pattern + "$")


def rename_keys(state_dict, table):
    """Rename every key through `table`'s (from, to) templates; keys no row matches come back apart."""
    rules = [(_template_regex(source), target) for source, target in table]
    renamed, unmatched = {}, []
    for key, tensor in state_dict.items():
        for regex, target in rules:
            match = regex.match(key)
            if match:
                renamed[target.format(**match.groupdict())] = tensor
                break
        else:
            unmatched.append(key)
    return renamed, unmatched


def check_all_renamed(unmatched, directory, table):
    """One line naming the keys no row of `table` (its name) knew: not this download, or a newer layout."""
    if unmatched:
        raise CheckpointError(f"{directory}: keys not in {table}: {unmatched[:10]}"
                              f"{' ...' if len(unmatched) > 10 else ''}")


def rename_released_keys(state_dict):
    """Released Show-o names -> ours."""
    return rename_keys(state_dict, SHOWO_KEY_TABLE)


def released_key_names(state_dict):
    """Ours -> released Show-o names: the same table, read right to left."""
    return rename_keys(state_dict, [(ours, theirs) for theirs, ours in SHOWO_KEY_TABLE])


# ----------------------------------------------------------------------------------------
# 2. Filling our networks from stored tensors, reading released folders
# ----------------------------------------------------------------------------------------

def build_empty(module_class, cfg):
    """A network of the right shapes with no memory behind it (PyTorch's 'meta' device).

    Building on the meta device allocates nothing and skips the random initialisation;
    `fill` then gives each parameter its stored values. So loading holds the weights
    once, never a random copy beside them.
    """
    with torch.device("meta"):
        return module_class(cfg)


def fill(module, state, source, dtype=None, device="cpu", keep_float32=(), checksums=None):
    """Give every parameter and buffer of `module` its tensor from `state`, one at a time.

    Checks first that the names and shapes match, and fails with ONE line listing what is
    missing, unexpected or misshapen. dtype casts floating tensors (names starting with a
    prefix in keep_float32 stay float32). Tensors are read, cast and moved one by one, so
    memory never holds more than the finished weights plus one tensor.

    Each tensor is checked as read, before any cast: against its CRC-32 in `checksums`
    ({name: crc}, as save_checkpoint stores them; files without them skip this), so damaged
    bytes are never silently used; and for NaN / inf, so a diverged run's weights are
    refused here rather than drawing black pictures later.
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshapen = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                 for k in own if k in state and state[k].shape != own[k].shape]
    problems = "; ".join(p for p in [f"missing {missing}" if missing else "",
                                     f"unexpected {unexpected}" if unexpected else "",
                                     f"wrong shape {misshapen}" if misshapen else ""] if p)
    if problems:
        raise CheckpointError(f"{source} does not fit the model: {problems}")
    # A weight stored as integers is a header that lies about its bytes (float32 read as
    # int32 gives values near -1e9), never a real weight.
    mistyped = [k for k in own if own[k].is_floating_point() and not state[k].dtype.is_floating_point]
    if mistyped:
        raise CheckpointError(f"{source}: tensor {mistyped[0]} is stored as {state[mistyped[0]].dtype}, but it is a "
                              f"floating-point weight: the file's header is wrong; download or write it again")
    checksums = checksums or {}
    loaded = {}
    for name, stored in state.items():
        wanted = own[name].dtype
        if dtype is not None and wanted.is_floating_point and not name.startswith(tuple(keep_float32)):
            wanted = dtype
        try:
            raw = stored.read() if isinstance(stored, StoredTensor) else stored
        except (RuntimeError, ValueError) as error:       # its bytes do not fit its shape
            raise CheckpointError(f"{source}: tensor {name} cannot be read ({first_line(error)}): "
                                  f"the file is damaged; download or write it again") from None
        if name in checksums and crc32(raw) != checksums[name]:
            raise CheckpointError(f"{source}: tensor {name} is damaged (checksum mismatch): the file was "
                                  f"corrupted; train or convert it again")
        if not all_finite(raw):
            raise CheckpointError(f"{source}: tensor {name} holds NaN/inf values: the run that wrote it "
                                  f"diverged; use an earlier checkpoint")
        loaded[name] = raw.to(device, wanted)
        del raw                                   # the file's bytes go now, not at the next tensor
    module.load_state_dict(loaded, assign=True)
    return module


def config_from_released(showo_dir, phi_dir=None):
    """ShowoConfig from the released config files (docs/checkpoints.md).

    showo/config.json gives the vocabulary; the transformer's shape comes from the
    Phi-1.5 download's config.json (its own vocab_size and qk_layernorm=false are
    ignored: Show-o resizes the vocabulary and always uses QK-Norm). Phi's file may hold
    nulls (e.g. "partial_rotary_factor": null): those keep the defaults.
    """
    showo = read_config(Path(showo_dir) / "config.json")
    if not showo:
        raise CheckpointError(f"{showo_dir}/config.json not found: pass the show-o checkpoint folder")
    phi = read_config(Path(phi_dir) / "config.json") if phi_dir else {}
    # A damaged or foreign config must fail here, in one line, not as a KeyError below or
    # a TypeError deep inside the model.
    require_sizes(showo, ("llm_vocab_size", "codebook_size", "vocab_size", "num_vq_tokens"),
                  Path(showo_dir) / "config.json", "showo")
    require_sizes(phi, [key for key in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                        "intermediate_size", "max_position_embeddings") if phi.get(key) is not None],
                  Path(phi_dir or ".") / "config.json", "phi")
    size = dict(
        hidden_size=phi.get("hidden_size"), num_layers=phi.get("num_hidden_layers"),
        num_heads=phi.get("num_attention_heads"), intermediate_size=phi.get("intermediate_size"),
        partial_rotary_factor=phi.get("partial_rotary_factor"), rope_theta=phi.get("rope_theta"),
        layer_norm_eps=phi.get("layer_norm_eps"),
        max_position_embeddings=phi.get("max_position_embeddings"),
        bos_token_id=phi.get("bos_token_id"), eos_token_id=phi.get("eos_token_id"),
    )
    cfg = ShowoConfig.from_dict({k: v for k, v in size.items() if v is not None})
    cfg.llm_vocab_size = showo["llm_vocab_size"]
    cfg.codebook_size = showo["codebook_size"]
    cfg.vocab_size = showo["vocab_size"]
    cfg.num_vq_tokens = showo["num_vq_tokens"]
    if showo.get("mask_token_id", cfg.mask_token_id) != cfg.mask_token_id:
        raise CheckpointError(f"{showo_dir}/config.json: mask_token_id {showo['mask_token_id']} is not "
                              f"vocab_size - 1 = {cfg.mask_token_id}; this layout is not Show-o's")
    return cfg


def require_sizes(config, keys, path, whose):
    """Each of `keys` in `config` a positive whole number, else one line naming the file."""
    for key in keys:
        value = config.get(key)
        if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            problem = f"has no {key}" if value is None else f"{key} is {value!r}, not a positive whole number"
            raise CheckpointError(f"{path} {problem}: the file is damaged or not {whose}'s; download it again")


def is_clip_variant(showo_dir):
    """Whether a Show-o folder is the CLIP-ViT variant: its config.json says `w_clip_vit: true`."""
    return bool(read_config(Path(showo_dir) / "config.json").get("w_clip_vit"))


def load_released_showo(showo_dir, phi_dir=None, dtype=None):
    """A `Showo` with the released weights from showo_dir (and Phi's config from phi_dir).

    The CLIP-ViT variant also holds `mm_projector`; the width of the CLIP features it takes
    is read from its first layer's weight, (hidden, clip width).
    """
    cfg = config_from_released(showo_dir, phi_dir)
    state = read_weights(showo_dir)
    if is_clip_variant(showo_dir):
        projector = state.get("mm_projector.0.weight")
        if projector is None or len(projector.shape) != 2:
            raise CheckpointError(f"{showo_dir}: config.json says w_clip_vit but the weights hold no 2-d "
                                  f"mm_projector.0.weight: the download is incomplete or not the CLIP-ViT variant")
        cfg.clip_width = projector.shape[1]
    renamed, unmatched = rename_released_keys(state)
    check_all_renamed(unmatched, showo_dir, "SHOWO_KEY_TABLE")
    return fill(build_empty(Showo, cfg), renamed, showo_dir, dtype).eval()


def released_clip_config(directory):
    """ClipConfig from a CLIP download: config.json's `vision_config` and preprocessor_config.json.

    Both the current (`{"shortest_edge": 336}`, `{"height": 336, "width": 336}`) and the older
    (a bare 336, as openai/clip-vit-large-patch14-336 ships) preprocessing sizes are read.
    """
    directory = Path(directory)
    raw = read_config(directory / "config.json")
    if not raw:
        raise CheckpointError(f"{directory}/config.json not found: pass the folder of the CLIP download "
                              f"(openai/clip-vit-large-patch14-336)")
    vision = raw.get("vision_config", raw)          # a CLIPVisionModel download has its sizes at the top
    if not isinstance(vision, dict):
        raise damaged(directory / "config.json", '"vision_config" is not an object')
    sizes = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "image_size",
             "patch_size")
    require_sizes(vision, sizes, directory / "config.json", "CLIP")
    if vision.get("hidden_act", "quick_gelu") != "quick_gelu":
        raise CheckpointError(f"{directory}/config.json: hidden_act {vision['hidden_act']!r}; this tower "
                              f"implements CLIP's quick_gelu only")
    if vision["num_hidden_layers"] < 2:
        raise CheckpointError(f"{directory}/config.json: {vision['num_hidden_layers']} layer; Show-o reads "
                              f"the features after the second-to-last layer, so it needs at least 2")
    preprocessing = read_config(directory / "preprocessor_config.json")
    if not preprocessing:
        raise CheckpointError(f"{directory}/preprocessor_config.json not found: download the whole CLIP folder")
    size, crop = preprocessing.get("size"), preprocessing.get("crop_size")
    picture = {"size": size.get("shortest_edge") if isinstance(size, dict) else size,
               "crop_size": crop.get("height") if isinstance(crop, dict) else crop}
    require_sizes(picture, picture, directory / "preprocessor_config.json", "CLIP")
    mean = preprocessing.get("image_mean", ClipConfig.image_mean)
    std = preprocessing.get("image_std", ClipConfig.image_std)
    if not all(isinstance(v, list | tuple) and len(v) == 3 and all(isinstance(x, int | float) for x in v)
               for v in (mean, std)):
        raise damaged(directory / "preprocessor_config.json", "image_mean and image_std are not 3 numbers each")
    if picture["crop_size"] != vision["image_size"]:
        raise CheckpointError(f"{directory}: preprocessor_config.json crops pictures to {picture['crop_size']} px "
                              f"but the tower reads {vision['image_size']} px: the two files are of different "
                              f"downloads")
    return ClipConfig(image_size=vision["image_size"], patch_size=vision["patch_size"],
                      hidden_size=vision["hidden_size"], num_layers=vision["num_hidden_layers"] - 1,
                      num_heads=vision["num_attention_heads"], intermediate_size=vision["intermediate_size"],
                      layer_norm_eps=vision.get("layer_norm_eps", 1e-5), resize_to=picture["size"],
                      image_mean=tuple(mean), image_std=tuple(std))


def load_released_clip(directory, width, dtype=None):
    """The vision tower of a CLIP download, for a projector that takes `width`-wide features.

    The width is checked against config.json before any weight is read. Only the vision
    tower is read: the text tower's keys (CLIP_UNUSED) and the download's last layer, which
    runs after the features Show-o reads, are left on disk.
    """
    cfg = released_clip_config(directory)
    if cfg.hidden_size != width:
        raise CheckpointError(f"{directory}: its CLIP features are {cfg.hidden_size} wide, but the Show-o "
                              f"projector takes {width}: pass the CLIP download the variant was trained with "
                              f"(openai/clip-vit-large-patch14-336)")
    renamed, unmatched = rename_keys(read_weights(directory), CLIP_KEY_TABLE)
    check_all_renamed([key for key in unmatched if not key.startswith(CLIP_UNUSED)], directory, "CLIP_KEY_TABLE")
    last = f"layers.{cfg.num_layers}."
    used = {name: stored for name, stored in renamed.items() if not name.startswith(last)}
    return fill(build_empty(ClipVisionTower, cfg), used, directory, dtype).eval()


def released_image_tokenizer_config(directory, num_vq_tokens=None):
    """ImageTokenizerConfig from a MAGVIT-v2 folder's config.json.

    The released config.json names no sizes (the reference builds the full-size default);
    a folder that lists sizes (like the test fixture) is read as it says. The picture
    size follows from the transformer: num_vq_tokens = (resolution / downsampling)^2, so
    the same tokenizer reads 256 px pictures for show-o and 512 px ones for
    show-o-512x512 (it is convolutional; only the grid it makes differs).
    """
    raw = read_config(Path(directory) / "config.json")
    sizes = {"resolution": raw.get("resolution"), "z_channels": raw.get("z_channels")}
    for part in ("encoder", "decoder"):
        section = raw.get(part) or {}
        if not isinstance(section, dict):
            raise damaged(Path(directory) / "config.json", f'"{part}" is not an object')
        sizes[f"{part}_ch"] = section.get("ch")
        sizes[f"{part}_ch_mult"] = section.get("ch_mult")
        sizes[f"{part}_res_blocks"] = section.get("num_res_blocks")
    cfg = ImageTokenizerConfig.from_dict({k: v for k, v in sizes.items() if v is not None})
    if num_vq_tokens is not None:
        grid = round(num_vq_tokens ** 0.5)
        if grid * grid != num_vq_tokens:
            raise CheckpointError(f"num_vq_tokens {num_vq_tokens} is not a square grid")
        cfg.resolution = grid * cfg.downsample
    return cfg


def load_released_image_tokenizer(directory, num_vq_tokens=None, dtype=None):
    """The released MAGVIT-v2 (`showlab/magvitv2`) or a folder in its layout."""
    cfg = released_image_tokenizer_config(directory, num_vq_tokens)
    return fill(build_empty(ImageTokenizer, cfg), read_weights(directory), directory, dtype).eval()


# ----------------------------------------------------------------------------------------
# 3. The one-file checkpoint
# ----------------------------------------------------------------------------------------

CHECKPOINT_FORMAT = "showo-from-scratch/1"

# How the authors' inference code (inference_mmu.py in showlab/Show-o) asks the released
# weights a question: after <|mmu|> <|soi|> image <|eoi|> <|endoftext|> comes this text,
# and the answer ends at <|endoftext|>. The tiny models of train.py are trained on the
# bare question, "{question}".
RELEASED_QUESTION_TEMPLATE = "USER: \n{question} ASSISTANT:"

# The CLIP-ViT variant asks as LLaVA does (inference_mmu.py, `w_clip_vit` branch): this
# system prompt between <|mmu|> and <|soi|>, and after the picture LLaVA's "phi1.5"
# conversation, stripped: "USER: {question} ASSISTANT:" (no newline, no <|endoftext|> before).
RELEASED_SYSTEM_PROMPT = ("A chat between a curious user and an artificial intelligence assistant. "
                          "The assistant gives helpful, detailed, and polite answers to the user's questions.")
RELEASED_CLIP_QUESTION_TEMPLATE = "USER: {question} ASSISTANT:"

# The picture-drawing tasks; a checkpoint stores sampling settings for each.
TASKS = ("t2i", "inpainting", "extrapolation")

# The sampling settings of the authors' published commands (README and demo configs of
# showlab/Show-o; docs/checkpoints.md has the table), by task and resolution.
RELEASED_SAMPLING = {
    256: {"t2i": {"steps": 18, "guidance": 1.75},
          "inpainting": {"steps": 16, "guidance": 1.75},
          "extrapolation": {"steps": 16, "guidance": 1.75}},
    512: {"t2i": {"steps": 50, "guidance": 5.0},
          "inpainting": {"steps": 16, "guidance": 1.75},
          "extrapolation": {"steps": 16, "guidance": 1.75}},
}


# Used when a checkpoint stores no settings of its own: the authors' 256 px text-to-image
# settings, with MaskGIT's re-masking temperature, its codes drawn at temperature 1, no top-k.
DEFAULT_SETTINGS = {**RELEASED_SAMPLING[256]["t2i"], "temperature": 1.0, "top_k": None, "code_temperature": 1.0}

# The range of each sampling setting, (lowest, highest, meaning): the same for a value
# given on the command line (cli.py) and for one stored in a checkpoint (check_stored_extra).
SETTING_LIMITS = {
    "steps": (1, 1000, "MaskGIT steps"),
    "guidance": (0.0, 100.0, "guidance scale w (0: no guidance; negative w pushes towards the wrong picture)"),
    "temperature": (0.0, 100.0, "temperature (0: no noise / greedy)"),
    "top_k": (1, 2 ** 20, "top-k"),
    "code_temperature": (0.01, 100.0, "code temperature (1: MaskGIT draws codes as released; lower: likelier codes)"),
}


def check_stored_extra(extra, path):
    """Refuse, in one line, stored settings no command would accept: a checkpoint's defaults
    are held to the command line's table, and its flags to the values the code knows."""
    def refuse(what):
        return CheckpointError(f"{path}: its stored {what}: the file was edited or damaged; "
                               f"train or convert it again")
    for task, settings in extra.get("sampling", {}).items():
        if task not in TASKS or not isinstance(settings, dict):
            raise refuse(f"sampling settings for {task!r} (tasks: {', '.join(TASKS)})")
        for name, value in settings.items():
            if name not in SETTING_LIMITS:
                raise refuse(f"sampling setting {name!r} ({', '.join(SETTING_LIMITS)})")
            low, high, meaning = SETTING_LIMITS[name]
            integral = isinstance(low, int)
            if value is None and name == "top_k":
                continue
            if (isinstance(value, bool) or not isinstance(value, (int, float)) or (integral and value != int(value))
                    or not (math.isfinite(value) and low <= value <= high)):
                raise refuse(f"{task} {name} = {value!r}; the {meaning} must be a "
                             f"{'whole ' if integral else ''}number in [{low:g}, {high:g}]")
    template = extra.get("question_template", "{question}")
    try:
        ok = isinstance(template, str) and "{question}" in template and template.format(question="q") != ""
    except (IndexError, KeyError, ValueError):
        ok = False
    if not ok:
        raise refuse(f"question_template {template!r}, which must hold {{question}} and nothing else in braces")
    choices = {"image_objective": ("mtp", "ar"), "mmu_features": MMU_FEATURES, "stories": (True, False)}
    for name, allowed in choices.items():
        if name in extra and (isinstance(extra[name], (list, dict)) or extra[name] not in allowed):
            raise refuse(f"{name} = {extra[name]!r} (one of {', '.join(map(str, allowed))})")
    tasks = extra.get("tasks", [])
    if not isinstance(tasks, list) or not set(tasks) <= {"draw", "answer", "tell"}:
        raise refuse(f"tasks = {tasks!r} (a list of draw, answer, tell)")
    if ("tell" in tasks) != extra.get("stories", False) and "tasks" in extra:
        raise refuse(f"tasks = {tasks!r}, which its stories flag ({extra.get('stories', False)!r}) contradicts")
    stored = extra.get("train_config")
    if stored is not None and extra.get("stories", False) != (stored.get("batch_story", 0) > 0):
        raise refuse(f"stories = {extra.get('stories')!r}, which its recipe (batch_story = "
                     f"{stored.get('batch_story', 0)}) contradicts")


def recommended_settings(extra, task):
    """{"steps", "guidance", "temperature", "top_k", "code_temperature"} a checkpoint recommends
    for a picture task.

    train.py stores the settings its scores were measured with; convert stores the authors'
    published ones, which differ by task and resolution.
    """
    return {**DEFAULT_SETTINGS, **extra.get("sampling", {}).get(task, {})}


def save_checkpoint(path, model, vq, text_tokenizer, extra=None, dtype=None, clip=None):
    """One file: both configs, both networks' weights, the text tokenizer, and `extra`.

    clip: the CLIP-ViT variant's vision tower (readers.ClipVisionTower), stored beside them
    as "clip" and "clip_config" (read back by `load_vision_tower`).

    Everything is stored as plain containers and tensors, so it loads with
    torch.load(weights_only=True) as well as with load_checkpoint. "checksums" holds the
    CRC-32 of every weight's bytes as written ({"showo": {name: crc}, "vq": {...}}), which
    load_checkpoint checks: a file damaged on disk or in a copy is refused, naming the
    tensor, instead of loading as a quietly broken model.

    The file appears whole or not at all: it is written under a temporary name, then
    renamed (an interrupted save never leaves half a file). The temporary name holds the
    process id, so two runs saving to the same path never write (or rename away) each
    other's file; it is removed if writing fails.
    """
    def weights(module):
        return {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).cpu()
                for k, v in module.state_dict().items()}
    networks = {"showo": model, "vq": vq, **({"clip": clip} if clip is not None else {})}
    states = {part: weights(network) for part, network in networks.items()}
    path = Path(path)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        torch.save({
            "format": CHECKPOINT_FORMAT,
            **{f"{part}_config": asdict(network.cfg) for part, network in networks.items()},
            **states,
            "checksums": {part: {k: crc32(v) for k, v in state.items()} for part, state in states.items()},
            "text_tokenizer": text_tokenizer.to_dict(),
            "extra": extra or {},
        }, temporary)
        os.replace(temporary, path)
    except (OSError, RuntimeError) as error:     # a full disk reaches torch.save as a RuntimeError
        raise CheckpointError(f"could not write {path} ({first_line(error)}): free some disk "
                              f"space or choose another path") from None
    finally:
        temporary.unlink(missing_ok=True)         # gone already after a successful rename


def check_grid(model_cfg, vq_cfg, source):
    """The image tokenizer must make exactly the grid the transformer reads."""
    if vq_cfg.grid_size ** 2 != model_cfg.num_vq_tokens:
        raise CheckpointError(f"{source}: the image tokenizer makes a {vq_cfg.grid_size}x{vq_cfg.grid_size} grid "
                              f"at {vq_cfg.resolution} px, but the transformer reads {model_cfg.num_vq_tokens} "
                              f"image tokens: convert again with `python checkpoint.py convert`")


def load_checkpoint(path, device="cpu", dtype=None):
    """(model, vq, text_tokenizer, extra) from a file written by save_checkpoint / convert.

    dtype casts the transformer (e.g. torch.bfloat16 on CUDA); the image tokenizer stays
    in float32, where its GroupNorms are accurate. Tensors are read one at a time straight
    into networks built on the meta device: memory peaks at the loaded weights, not at
    the file plus a randomly initialised copy. (Under `extra`, tensors such as a training
    run's optimizer state stay on disk until `materialize` reads them.)
    """
    blob = read_checkpoint_file(path)
    cfg, vq_cfg = ShowoConfig.from_dict(blob["showo_config"]), ImageTokenizerConfig.from_dict(blob["vq_config"])
    check_grid(cfg, vq_cfg, path)
    check_stored_extra(blob["extra"], path)
    checksums = blob.get("checksums", {})                # files written before checksums have none
    model = fill(build_empty(Showo, cfg), blob["showo"], path, dtype or torch.float32, device,
                 checksums=checksums.get("showo"))
    vq = fill(build_empty(ImageTokenizer, vq_cfg), blob["vq"], path, torch.float32, device,
              checksums=checksums.get("vq"))
    return model.eval(), vq.eval(), TextTokenizer.from_dict(blob["text_tokenizer"]), blob["extra"]


def read_checkpoint_file(path):
    """The dict save_checkpoint wrote, every tensor still on disk; one line for anything else."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} not found: train one with `python train.py --tiny` "
                              f"or convert the released weights with `python checkpoint.py convert`")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder: give a checkpoint file (e.g. out/tiny.pt)")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a regular file (a device or a pipe?): give a checkpoint file")
    blob = read_torch_file(path)
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a Show-o checkpoint of this project: "
                              f"convert released weights with `python checkpoint.py convert`")
    return blob


def load_vision_tower(path, device="cpu", dtype=None):
    """The CLIP vision tower of a converted CLIP-ViT variant (the file's "clip" part).

    Kept apart from load_checkpoint, whose four results every caller unpacks: only the
    variant's understanding path needs it. The file is parsed again, which reads its list
    of tensors, not their bytes.
    """
    blob = read_checkpoint_file(path)
    if "clip" not in blob:
        raise CheckpointError(f"{path} holds no CLIP vision tower: convert the CLIP-ViT variant with "
                              f"`python checkpoint.py convert ... --clip DIR`")
    tower = build_empty(ClipVisionTower, ClipConfig(**blob["clip_config"]))
    return fill(tower, blob["clip"], path, dtype or torch.float32, device,
                checksums=blob.get("checksums", {}).get("clip")).eval()


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def convert(showo_dir, magvit_dir, tokenizer_dir, out, dtype="fp32", clip_dir=None):
    """Released folders -> one checkpoint file, with the authors' inference settings.

    clip_dir: the CLIP download, needed by (and only by) the CLIP-ViT variant.
    """
    showo_config = read_config(Path(showo_dir) / "config.json")   # {} when missing: load_released_showo says so
    clip_variant = bool(showo_config.get("w_clip_vit"))
    if clip_variant and clip_dir is None:
        raise CheckpointError(f"{showo_dir} is the CLIP-ViT variant (config.json: w_clip_vit true): pass its "
                              f"vision tower too, --clip DIR (openai/clip-vit-large-patch14-336)")
    if clip_dir is not None and showo_config and not clip_variant:
        raise CheckpointError(f"--clip {clip_dir}: {showo_dir} is not the CLIP-ViT variant (its config.json "
                              f"has no w_clip_vit: true): drop --clip")
    print(f"reading Show-o from {showo_dir} ...")
    model = load_released_showo(showo_dir, tokenizer_dir, DTYPES[dtype])
    clip = None
    if clip_variant:
        print(f"reading the CLIP vision tower from {clip_dir} ...")
        clip = load_released_clip(clip_dir, model.cfg.clip_width, DTYPES[dtype])
    print(f"reading the MAGVIT-v2 image tokenizer from {magvit_dir} ...")
    vq = load_released_image_tokenizer(magvit_dir, model.cfg.num_vq_tokens, DTYPES[dtype])
    try:
        text_tokenizer = TextTokenizer.from_files(tokenizer_dir)
    except (ValueError, FileNotFoundError) as error:   # tokenizer.py's errors, already one line
        raise CheckpointError(str(error)) from None
    if len(text_tokenizer) > model.cfg.llm_vocab_size:
        raise CheckpointError(f"the text tokenizer in {tokenizer_dir} has {len(text_tokenizer)} ids but "
                              f"the model only {model.cfg.llm_vocab_size} text ids: wrong tokenizer folder?")
    resolution = vq.cfg.resolution
    sampling = RELEASED_SAMPLING.get(resolution, RELEASED_SAMPLING[256 if resolution < 384 else 512])
    # The CLIP variant asks its questions after a system prompt and in LLaVA's words.
    asking = ({"question_template": RELEASED_CLIP_QUESTION_TEMPLATE, "system_prompt": RELEASED_SYSTEM_PROMPT}
              if clip_variant else {"question_template": RELEASED_QUESTION_TEMPLATE})
    save_checkpoint(out, model, vq, text_tokenizer, extra={
        "source": {"showo": str(showo_dir), "magvit": str(magvit_dir),
                   **({"clip": str(clip_dir)} if clip_variant else {})},
        **asking,
        "sampling": sampling,
    }, clip=clip)
    params = sum(p.numel() for p in model.parameters())
    understanding = "" if clip is None else (f"; understanding through a CLIP tower of "
                                             f"{sum(p.numel() for p in clip.parameters()) / 1e6:.0f}M parameters "
                                             f"({clip.cfg.num_features} features of {clip.cfg.image_size} px pictures)")
    print(f"wrote {out}: transformer {params / 1e6:.0f}M parameters in {dtype}, "
          f"pictures of {resolution} px ({vq.cfg.grid_size}x{vq.cfg.grid_size} image tokens){understanding}")


def main(argv=None):
    """`python checkpoint.py convert ...`: parsed, checked and run by cli.py (errors as one line)."""
    from cli import checkpoint_command
    checkpoint_command(argv)


if __name__ == "__main__":
    main()

"""File formats: the released downloads, and this project's one-file checkpoint.

Show-o's weights come as three downloads (docs/checkpoints.md has the full layout):

* `showlab/show-o` (or `show-o-512x512`): config.json (the vocabulary) and the
  transformer's weights in `pytorch_model.bin` (a torch pickle) or `*.safetensors`,
  possibly sharded with an `*.index.json`;
* `showlab/magvitv2`: the image tokenizer, config.json and `*.safetensors`;
* `microsoft/phi-1_5`: config.json (the transformer's sizes) and the BPE files;
* for the CLIP-ViT variant (`showlab/show-o-w-clip-vit`, config `w_clip_vit: true`) also
  `openai/clip-vit-large-patch14-336`: its vision tower reads the pictures to understand.

This file reads all of them and writes ONE file, the checkpoint that train.py writes and
sampling.py reads. In order:

0. what every command line of the project shares: `UsageError` (one line for the user,
   never a traceback), `pick_device`, output paths checked before any work, and
   `one_writer` (one training run per checkpoint file);
1. `StoredTensor` and the two weight-file readers (safetensors and torch's zip pickle),
   both lazy: a tensor's bytes are read only when it is needed, one tensor at a time, so
   loading never holds two copies of the weights;
2. `SHOWO_KEY_TABLE` (and `CLIP_KEY_TABLE`), the visible tables from the released key
   names to ours;
3. reading released folders (`load_released_showo`, `load_released_image_tokenizer`,
   `load_released_clip`);
4. the one-file checkpoint (`save_checkpoint`, `load_checkpoint`, `load_vision_tower`) and
   `python checkpoint.py convert ...`, with what the authors' own inference uses:
   their question template and their sampling settings for each task.

Read first: sampling.py (and model.py / tokenizer.py, the networks these weights fill).
Read next: bench.py (its `loading` section times and measures all of this at full size).
"""

import argparse
import json
import os
import pickle
import re
import struct
import sys
import tempfile
import zipfile
import zlib
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

import torch

from model import ClipConfig, ClipVisionTower, Showo, ShowoConfig
from tokenizer import ImageTokenizer, ImageTokenizerConfig, TextTokenizer, read_json


# ----------------------------------------------------------------------------------------
# 0. What every command line shares: one-line errors, the device, outputs that are safe
#    to write (checked before any work, one writer at a time)
# ----------------------------------------------------------------------------------------

class UsageError(Exception):
    """Bad input from the user: a file, a flag, a value. The message is one line that says
    what to do; every command line of the project prints it as `error: ...` and exits."""


class CheckpointError(UsageError):
    """A checkpoint that cannot be loaded; the message says what to do."""


def exit_with_one_line(job, *args):
    """Run a command's job; bad input (UsageError, ValueError, OSError) and Ctrl-C end it with
    one line on stderr and a non-zero exit, never a traceback. For the CLIs that write
    their outputs only at the end (sampling.py, evaluate.py, bench.py)."""
    try:
        return job(*args)
    except (UsageError, ValueError, OSError) as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:
        sys.exit("interrupted: nothing was written")


def pick_device(name):
    """Where the weights go: 'auto' -> cuda when present; 'cuda' without CUDA is an error,
    never a silent fallback to the CPU."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but no CUDA GPU is visible: use --device cpu")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def check_writable_folder(folder, what, create=False):
    """Refuse, before any work, a folder that cannot take a new file (`what` names the flag).

    Creates and removes a small probe file there: os.access cannot tell, because these tools
    often run as root, to whom it answers yes even on a read-only disk. With create=True a
    missing folder is fine (the tool makes it): its nearest existing parent is probed.
    """
    folder = Path(folder)
    while create and not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise UsageError(f"{what}: the folder {folder} does not exist: create it first or choose another place")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe-"):
            pass
    except OSError as error:
        raise UsageError(f"{what}: cannot write in {folder} ({error.strerror}): choose another place") from None


def check_writable_file(path, what):
    """The same for an output file: not an existing folder, and its folder takes new files."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{what} {path} is a folder: give a file name in it")
    check_writable_folder(path.parent, what)


def first_line(error):
    """An exception's message cut to one line (torch's RuntimeErrors span several)."""
    return (str(error).splitlines() or [error.__class__.__name__])[0]


def damaged(path, what):
    """The one message for a weights or config file whose bytes make no sense."""
    return CheckpointError(f"{path} is damaged ({what}): the download or write was cut or corrupted; "
                           f"download or write it again")


def read_config(path):
    """tokenizer.read_json ({} when missing), with a damaged file as a CheckpointError."""
    try:
        return read_json(Path(path))
    except ValueError as error:                  # tokenizer.py cannot import CheckpointError
        raise CheckpointError(str(error)) from None


@contextmanager
def one_writer(path):
    """Hold PATH.lock (holding our pid) while a run writes PATH; refuse a second live writer.

    Two training runs in one --out-dir would overwrite each other's checkpoints. A lock
    left by a process that does not exist (a killed run) is taken over.
    """
    lock = Path(f"{path}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            owner = lock.read_text().strip() if lock.is_file() else ""
            if owner.isdigit() and process_exists(int(owner)):
                raise UsageError(f"another run (pid {owner}) is writing {path}: wait for it to finish, "
                                 f"or give this one another --out-dir") from None
            lock.unlink(missing_ok=True)
    else:
        raise UsageError(f"cannot take the lock {lock}: remove it if no run is writing {path}")
    os.write(descriptor, str(os.getpid()).encode())
    os.close(descriptor)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def process_exists(pid):
    """Whether a process with this pid is running (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:            # it exists, but belongs to someone else
        return True
    return True


# ----------------------------------------------------------------------------------------
# 1. Weight files, read one tensor at a time
# ----------------------------------------------------------------------------------------

class StoredTensor:
    """A tensor still on disk: its shape and dtype, and `load()` to read its bytes."""

    def __init__(self, path, shape, dtype, read):
        self.path, self.shape, self.dtype, self._read = path, torch.Size(shape), dtype, read

    def read(self):
        """The tensor exactly as stored (dtype and bytes), on the CPU: what checksums cover."""
        return self._read()

    def load(self, dtype=None, device="cpu"):
        """Read the tensor, then cast / move it (its file bytes are released right after)."""
        tensor = self._read()
        return tensor.to(device=device, dtype=dtype or tensor.dtype)


def all_finite(tensor):
    """No NaN or inf in a tensor. Its min and max show both (NaN propagates through them),
    in one pass and without a copy: torch.isfinite(t).all() was 100x slower, a minute at full size."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return True
    return bool(torch.isfinite(torch.stack(torch.aminmax(tensor))).all())


def crc32(tensor):
    """CRC-32 of a tensor's bytes in memory order (zlib's runs at GB/s: cheap beside the read).
    Flattened first, because a 0-d tensor cannot be viewed as bytes."""
    return zlib.crc32(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}


def _read_bytes(path, offset, size):
    """`size` bytes of `path` from `offset`, read straight into the one buffer the tensor
    will keep (`bytearray(f.read(size))` would hold each tensor twice for a moment; at full
    size both peak at 1.11x the bf16 weights, so this is tidiness rather than a saving)."""
    buffer = bytearray(size)
    with open(path, "rb") as f:
        f.seek(offset)
        if f.readinto(buffer) != size:
            raise CheckpointError(f"{path} ends early: the file is incomplete, write or download it again")
    return buffer


def _zip_member_bytes(path, member):
    """The bytes of one member of torch.save's zip file, read in place when it is stored
    uncompressed (torch.save never compresses): its data starts after the local header."""
    if member.compress_type != zipfile.ZIP_STORED:
        with zipfile.ZipFile(path) as archive:
            return bytearray(archive.read(member))
    with open(path, "rb") as f:
        f.seek(member.header_offset)
        name_length, extra_length = struct.unpack("<HH", f.read(30)[26:30])
    return _read_bytes(path, member.header_offset + 30 + name_length + extra_length, member.file_size)


def read_safetensors(path):
    """The tensors of a .safetensors file, as StoredTensors. The format is tiny:

    [8 bytes: little-endian header length n][n bytes: JSON header][raw tensor bytes]
    The header maps each name to {dtype, shape, data_offsets: [begin, end]}, offsets
    counted from the end of the header.
    """
    # Every number in the header is checked against the file before it is used: a damaged
    # download would otherwise ask for an exabyte (OverflowError) or read past the end.
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        start = f.read(8)
        if len(start) < 8:
            raise damaged(path, "shorter than a safetensors header")
        (header_len,) = struct.unpack("<Q", start)
        if header_len > size - 8:
            raise damaged(path, f"header of {header_len} bytes in a file of {size}")
        try:
            header = json.loads(f.read(header_len))
        except ValueError:                        # bad JSON or bad UTF-8
            raise damaged(path, "its header is not JSON") from None
    if not isinstance(header, dict):
        raise damaged(path, "its header is not a JSON object")
    data_size = size - 8 - header_len
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = info["data_offsets"]
            dtype, shape = _SAFETENSORS_DTYPES[info["dtype"]], torch.Size(info["shape"])
        except (KeyError, TypeError, ValueError):
            raise damaged(path, f"tensor {name} has no valid dtype, shape and data_offsets") from None
        nbytes = shape.numel() * dtype.itemsize
        if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end <= data_size
                and end - begin == nbytes):
            raise damaged(path, f"tensor {name} needs {nbytes} bytes, its offsets say [{begin}, {end}) "
                                f"of the {data_size} the file holds")

        def read(begin=begin, end=end, dtype=dtype, shape=shape):
            raw = _read_bytes(path, 8 + header_len + begin, end - begin)
            return torch.frombuffer(raw, dtype=dtype).reshape(shape) if raw else torch.empty(shape, dtype=dtype)
        tensors[name] = StoredTensor(path, shape, dtype, read)
    return tensors


def write_safetensors(path, tensors):
    """The inverse of read_safetensors (tensors are written contiguous, in name order)."""
    names = {dtype: name for name, dtype in _SAFETENSORS_DTYPES.items()}
    header, offset = {}, 0
    for name, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        header[name] = {"dtype": names[tensor.dtype], "shape": list(tensor.shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)) + encoded)
        for tensor in tensors.values():
            f.write(tensor.contiguous().view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")


# torch.save writes a zip: `NAME/data.pkl` is a pickle of the saved object in which every
# tensor is a call  torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)
# and every storage a "persistent id" ('storage', torch.FloatStorage, key, device, numel)
# whose bytes are the zip member `NAME/data/KEY`. torch.load reads all of them at once;
# the unpickler below builds StoredTensors instead, and only for these few known names
# (any other global in the pickle is refused, as torch.load(weights_only=True) does).
_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64, "FloatStorage": torch.float32, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


class _NotAllowed(pickle.UnpicklingError):
    """A global other than tensors and plain containers: the file is some other pickle."""


class _LazyUnpickler(pickle.Unpickler):
    def __init__(self, archive, prefix, path):
        super().__init__(archive.open(f"{prefix}data.pkl"))
        self.archive, self.prefix, self.path = archive, prefix, path

    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return self.stored_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise _NotAllowed(f"{module}.{name}")

    def persistent_load(self, persistent_id):
        _, dtype, key, _, numel = persistent_id                  # ('storage', dtype, key, device, numel)
        return dtype, key, numel

    def stored_tensor(self, storage, offset, size, stride, *unused):
        dtype, key, numel = storage
        member = self.archive.getinfo(f"{self.prefix}data/{key}")

        def read():
            raw = _zip_member_bytes(self.path, member)
            return torch.frombuffer(raw, dtype=dtype).as_strided(size, stride, offset) if numel else \
                torch.empty(size, dtype=dtype)
        return StoredTensor(self.path, size, dtype, read)


def read_torch_file(path):
    """What torch.save wrote to `path`, with every tensor left on disk as a StoredTensor."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [name for name in archive.namelist() if name.endswith("data.pkl")]
            if not pickles:
                raise zipfile.BadZipFile("no data.pkl inside")
            return _LazyUnpickler(archive, pickles[0][:-len("data.pkl")], path).load()
    except _NotAllowed as error:
        # Never unpickled in full (that could run any code the file names), so no advice
        # about torch.load(weights_only=False) either: this is simply not a weights file.
        raise CheckpointError(f"{path} holds a Python object ({error}), not only tensors: it is not a "
                              f"weights file; give a checkpoint written by train.py or convert") from None
    except OSError as error:                     # not a damaged file: a folder, no permission, a disk error
        raise CheckpointError(f"cannot read {path} ({error.strerror or error}): check the path and "
                              f"its permissions") from None
    except Exception as error:
        # A cut or garbled zip or pickle fails in any of a dozen ways (BadZipFile, EOFError,
        # UnpicklingError, KeyError, struct.error, ...): all mean the same to the user.
        raise CheckpointError(f"{path} is not a readable torch checkpoint ({error.__class__.__name__}): "
                              f"the file is damaged or cut short; download or write it again") from None


def materialize(value):
    """A loaded object with every StoredTensor read into memory (for small parts, e.g. optimizer state)."""
    if isinstance(value, StoredTensor):
        return value.load()
    if isinstance(value, dict):
        return {k: materialize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(materialize(v) for v in value)
    return value


def read_weights(directory):
    """All tensors of a released checkpoint directory, as StoredTensors, whatever the layout.

    Accepted: pytorch_model.bin; model.safetensors / any *.safetensors; and sharded
    variants described by a *.index.json ({"weight_map": {name: shard file}}).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} not found: pass the folder "
                              f"downloaded with huggingface-cli")
    index = sorted(directory.glob("*.index.json"))
    if index:
        weight_map = read_config(index[0]).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(n, str) for n in weight_map.values()):
            raise damaged(index[0], 'no "weight_map" of tensor names to shard files')
        files = [directory / name for name in sorted(set(weight_map.values()))]
    else:
        files = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("*.bin"))
    if not files:
        raise CheckpointError(f"no weights in {directory}: expected pytorch_model.bin or "
                              f"*.safetensors (with an *.index.json when sharded)")
    state = {}
    for file in files:
        if not file.exists():
            raise CheckpointError(f"shard {file.name} named in the index is missing from {directory}")
        state.update(read_safetensors(file) if file.suffix == ".safetensors" else read_torch_file(file))
    return state


# ----------------------------------------------------------------------------------------
# 2. Released key names -> ours
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

# The same for a CLIP download (transformers' CLIPModel names) -> model.ClipVisionTower.
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
# 3. Filling our networks from stored tensors
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


# The config files as the real downloads write them: show-o's names the vocabulary,
# Phi-1.5's the sizes (with nulls among them), magvit's nothing about sizes at all.
RELEASED_CONFIGS = {
    "showo": {"_class_name": "Showo", "_diffusers_version": "0.30.1", "w_clip_vit": False, "vocab_size": 58498,
              "llm_vocab_size": 50295, "llm_model_path": "microsoft/phi-1_5", "codebook_size": 8192,
              "num_vq_tokens": 256, "load_from_showo": False, "mask_token_id": 58497},
    "phi": {"_name_or_path": "microsoft/phi-1_5", "architectures": ["PhiForCausalLM"], "model_type": "phi",
            "vocab_size": 51200, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24,
            "num_attention_heads": 32, "num_key_value_heads": None, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
            "attention_dropout": 0.0, "hidden_act": "gelu_new", "max_position_embeddings": 2048,
            "initializer_range": 0.02, "layer_norm_eps": 1e-05, "use_cache": True, "tie_word_embeddings": False,
            "rope_theta": 10000.0, "rope_scaling": None, "partial_rotary_factor": 0.5, "qk_layernorm": False,
            "bos_token_id": None, "eos_token_id": None, "torch_dtype": "float32"},
    "magvit": {"_class_name": "MAGVITv2", "_diffusers_version": "0.30.1"},
}


def write_released_layout(directory, gpt2_dir, seed=0, clip=False):
    """Random weights of the released sizes, written as the three downloads are laid out.

    directory/showo: config.json + pytorch_model.bin (our model's weights renamed through
    SHOWO_KEY_TABLE read right to left); directory/magvit: config.json +
    model.safetensors; directory/phi: config.json + GPT-2's vocab.json and merges.txt
    (from gpt2_dir) + Phi-1.5's 38 whitespace tokens in added_tokens.json. A full-size
    test of loading that needs no download (bench.py loading); about 6.2 GB on disk.
    clip=True: the CLIP-ViT variant instead (`w_clip_vit`, with `mm_projector`), and its
    CLIP download in directory/clip (`write_released_clip`, 1.2 GB more).
    """
    directory = Path(directory)
    for part, config in RELEASED_CONFIGS.items():
        (directory / part).mkdir(parents=True, exist_ok=True)
        config = {**config, "w_clip_vit": True} if part == "showo" and clip else config
        (directory / part / "config.json").write_text(json.dumps(config, indent=2))
    torch.manual_seed(seed)
    showo_cfg = config_from_released(directory / "showo", directory / "phi")
    if clip:
        showo_cfg.clip_width = ClipConfig().hidden_size
        write_released_clip(directory / "clip", ClipConfig())
    renamed, _ = released_key_names(Showo(showo_cfg).state_dict())
    torch.save(renamed, directory / "showo" / "pytorch_model.bin")
    del renamed
    write_safetensors(directory / "magvit" / "model.safetensors", ImageTokenizer(ImageTokenizerConfig()).state_dict())
    for name in ("vocab.json", "merges.txt"):
        (directory / "phi" / name).write_bytes((Path(gpt2_dir) / name).read_bytes())
    whitespace = {" " * n: 50257 + 31 - n for n in range(31, 1, -1)}
    whitespace.update({"\t" * n: 50287 + 9 - n for n in range(9, 1, -1)})
    (directory / "phi" / "added_tokens.json").write_text(json.dumps(whitespace))


def write_released_clip(directory, cfg):
    """Random weights of a CLIP download with the tower `cfg` describes, in its layout.

    config.json (`vision_config`, one layer more than cfg runs: the download's last one,
    which Show-o never uses), preprocessor_config.json in the older format
    openai/clip-vit-large-patch14-336 ships (bare sizes), and model.safetensors with the
    vision tower's keys (CLIP_KEY_TABLE read right to left, plus the post-LayerNorm). The
    text tower is left out: loading ignores it. Full size (the default ClipConfig): 1.2 GB.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vision = {"hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_layers + 1,
              "num_attention_heads": cfg.num_heads, "intermediate_size": cfg.intermediate_size,
              "image_size": cfg.image_size, "patch_size": cfg.patch_size, "layer_norm_eps": cfg.layer_norm_eps,
              "hidden_act": "quick_gelu", "model_type": "clip_vision_model"}
    (directory / "config.json").write_text(json.dumps({"architectures": ["CLIPModel"], "model_type": "clip",
                                                       "vision_config": vision}, indent=2))
    preprocessing = {"crop_size": cfg.image_size, "size": cfg.resize_to, "do_center_crop": True,
                     "do_normalize": True, "do_resize": True, "feature_extractor_type": "CLIPFeatureExtractor",
                     "image_mean": list(cfg.image_mean), "image_std": list(cfg.image_std), "resample": 3}
    (directory / "preprocessor_config.json").write_text(json.dumps(preprocessing, indent=2))
    tower = ClipVisionTower(replace(cfg, num_layers=cfg.num_layers + 1))
    state, _ = rename_keys(tower.state_dict(), [(ours, theirs) for theirs, ours in CLIP_KEY_TABLE])
    state["vision_model.post_layernorm.weight"] = torch.ones(cfg.hidden_size)
    state["vision_model.post_layernorm.bias"] = torch.zeros(cfg.hidden_size)
    write_safetensors(directory / "model.safetensors", state)


# ----------------------------------------------------------------------------------------
# 4. The one-file checkpoint
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


def save_checkpoint(path, model, vq, text_tokenizer, extra=None, dtype=None, clip=None):
    """One file: both configs, both networks' weights, the text tokenizer, and `extra`.

    clip: the CLIP-ViT variant's vision tower (model.ClipVisionTower), stored beside them
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
    check_writable_file(out, "--out")            # before minutes of reading, not after
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
    parser = argparse.ArgumentParser(description="Show-o checkpoint files.")
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="released checkpoint folders -> one showo.pt")
    c.add_argument("--showo", required=True, help="folder of showlab/show-o (or show-o-512x512)")
    c.add_argument("--magvit", required=True, help="folder of showlab/magvitv2")
    c.add_argument("--tokenizer", required=True,
                   help="folder of microsoft/phi-1_5 (vocab.json, merges.txt, config.json)")
    c.add_argument("--clip", help="folder of openai/clip-vit-large-patch14-336, for the CLIP-ViT variant "
                                  "(showlab/show-o-w-clip-vit) only")
    c.add_argument("--out", default="showo.pt")
    c.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    args = parser.parse_args(argv)
    try:
        convert(args.showo, args.magvit, args.tokenizer, args.out, args.dtype, args.clip)
    except (UsageError, ValueError, OSError) as error:   # every one a one-line message, no traceback
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()

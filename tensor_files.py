"""Weight files, read one tensor at a time: safetensors and torch's zip pickle.

Reference for checkpoint.py: the released downloads come as `*.safetensors` and as
`pytorch_model.bin` (what torch.save writes), and this project's own checkpoint is a
torch.save file too. Both readers are lazy: a tensor's bytes are read only when it is
needed, one tensor at a time, so loading never holds two copies of the weights, and
neither ever unpickles arbitrary objects (a file that names other Python objects is
refused, as torch.load(weights_only=True) does). Every number a file's header gives is
checked against the file before it is used, so a damaged file is one clear line.

Read first: checkpoint.py.
"""

import json
import os
import pickle
import struct
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path

import torch

from bpe import read_json


class CheckpointError(ValueError):
    """A weights, config or checkpoint file that cannot be used; the message is one line that
    says what to do (cli.py prints it as `error: ...`)."""


def first_line(error):
    """An exception's message cut to one line (torch's RuntimeErrors span several)."""
    return (str(error).splitlines() or [error.__class__.__name__])[0]


def damaged(path, what):
    """The one message for a weights or config file whose bytes make no sense."""
    return CheckpointError(f"{path} is damaged ({what}): the download or write was cut or corrupted; "
                           f"download or write it again")


def read_config(path):
    """bpe.read_json ({} when missing), with a damaged file as a CheckpointError."""
    try:
        return read_json(Path(path))
    except ValueError as error:                  # bpe.py raises a plain ValueError
        raise CheckpointError(str(error)) from None


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
    in one pass and without the full-size bool copy that torch.isfinite(t).all() makes."""
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
    tensors, spans = {}, []
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
        spans.append((begin, end, name))

        def read(begin=begin, end=end, dtype=dtype, shape=shape):
            raw = _read_bytes(path, 8 + header_len + begin, end - begin)
            return torch.frombuffer(raw, dtype=dtype).reshape(shape) if raw else torch.empty(shape, dtype=dtype)
        tensors[name] = StoredTensor(path, shape, dtype, read)
    # As the format's own library requires: the tensors tile the data, in offset order, with
    # no gap and no overlap (two tensors sharing bytes would silently hold one's values).
    covered = 0
    for begin, end, name in sorted(spans):
        if begin != covered:
            raise damaged(path, f"tensor {name} starts at byte {begin}, the tensor before it ends at "
                                f"{covered}: offsets overlap or leave a gap")
        covered = end
    if covered != data_size:
        raise damaged(path, f"its tensors cover {covered} of the {data_size} data bytes")
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

"""Damaged files: nothing loads silently wrong, and nothing ends in a traceback.

A download cut short, a disk that flipped bytes, a run that diverged, a folder given
where a file belongs: each must stop with ONE line that names the file (or the tensor)
and says what to do. Every case starts from a valid released layout (a copy of the
parity fixture, tests/fixtures/official_tiny, plus a small BPE tokenizer), damages one
thing, and runs `python checkpoint.py convert` in-process, or load_checkpoint.
"""

import json
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

import checkpoint
from bpe import TextTokenizer
from checkpoint import load_checkpoint, save_checkpoint
from tensor_files import CheckpointError, read_torch_file

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "official_tiny"


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """A valid released layout: showo/, magvit/ and phi/ (config.json, vocab.json, merges.txt)."""
    directory = tmp_path_factory.mktemp("released")
    for part in ("showo", "magvit"):
        shutil.copytree(FIXTURE / part, directory / part)
    (directory / "phi").mkdir()
    shutil.copy(FIXTURE / "phi" / "config.json", directory / "phi")
    TextTokenizer.train(["what shape is at the top left?"] * 3, 260).save(directory / "phi")
    return directory


@pytest.fixture(scope="module")
def saved(layout, tmp_path_factory):
    """The layout converted to one checkpoint file (with checksums)."""
    out = tmp_path_factory.mktemp("converted") / "showo.pt"
    convert(layout, out)
    return out


def convert(directory, out):
    """`python checkpoint.py convert` on a layout; returns the exit message, or None."""
    try:
        checkpoint.main(["convert", "--showo", str(directory / "showo"), "--magvit", str(directory / "magvit"),
                         "--tokenizer", str(directory / "phi"), "--out", str(out)])
    except SystemExit as stop:
        assert stop.code not in (None, 0)
        return str(stop.code)
    return None


def assert_one_line(message, *names):
    """An error for people: one line, no traceback, naming what is wrong."""
    assert message, "expected an error"
    assert "\n" not in message and "Traceback" not in message, message
    for name in names:
        assert str(name) in message, (name, message)


# ---- ways to damage a file -------------------------------------------------------------

def cut(path, keep=0.5):
    """Keep the first part of the file, as an interrupted download does."""
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def edit_json(path, change):
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def safetensors_header(path, change):
    """Rewrite a safetensors file's header through `change` (tensor bytes untouched)."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = change(json.loads(data[8:8 + length]))
    encoded = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data[8 + length:])


def every_tensor(header, **changes):
    return {k: (v if k == "__metadata__" else {**v, **changes}) for k, v in header.items()}


def share_first_two_tensors(header):
    """Point the second tensor (in offset order) at the first one's bytes: every size and
    offset still fits the file, only the overlap gives it away."""
    names = [k for _, k in sorted((v["data_offsets"][0], k) for k, v in header.items() if k != "__metadata__")]
    return {**header, names[1]: dict(header[names[0]])}


def broken_pickle(path):
    """A zip that is fine, whose data.pkl is not: the pickle stops halfway."""
    with zipfile.ZipFile(path) as source:
        members = [(m.filename, source.read(m)) for m in source.infolist()]
    with zipfile.ZipFile(path, "w") as target:
        for name, data in members:
            target.writestr(name, data[:len(data) // 2] if name.endswith("data.pkl") else data)


def bad_index(text):
    def damage(directory):
        (directory / "showo" / "pytorch_model.bin.index.json").write_text(text)
    return damage


# (case, damage(directory), the file the message must name, relative to the layout)
CONVERT_CASES = [
    ("showo config cut", lambda d: cut(d / "showo/config.json"), "showo/config.json"),
    ("showo config a list", lambda d: (d / "showo/config.json").write_text("[1, 2]"), "showo/config.json"),
    ("showo config missing a key", lambda d: edit_json(d / "showo/config.json",
                                                       lambda c: {k: v for k, v in c.items() if k != "vocab_size"}),
     "showo/config.json"),
    ("index garbled", bad_index('{"weight_map": {"a": "pytorch_'), "showo/pytorch_model.bin.index.json"),
    ("index without weight_map", bad_index('{"metadata": {}}'), "showo/pytorch_model.bin.index.json"),
    ("bin not a zip", lambda d: (d / "showo/pytorch_model.bin").write_bytes(b"\x00" * 4096),
     "showo/pytorch_model.bin"),
    ("bin cut", lambda d: cut(d / "showo/pytorch_model.bin"), "showo/pytorch_model.bin"),
    ("bin broken pickle", lambda d: broken_pickle(d / "showo/pytorch_model.bin"), "showo/pytorch_model.bin"),
    ("phi config cut", lambda d: cut(d / "phi/config.json"), "phi/config.json"),
    ("phi config wrong type", lambda d: edit_json(d / "phi/config.json", lambda c: {**c, "hidden_size": "64"}),
     "phi/config.json"),
    ("magvit config cut", lambda d: cut(d / "magvit/config.json", 0.3), "magvit/config.json"),
    ("safetensors header length overflows", lambda d: (d / "magvit/model.safetensors").write_bytes(
        b"\xff" * 8 + (d / "magvit/model.safetensors").read_bytes()[8:]), "magvit/model.safetensors"),
    ("safetensors header not JSON", lambda d: safetensors_header(d / "magvit/model.safetensors",
                                                                 lambda h: b"{\"x\": [1, 2" + b" " * 20),
     "magvit/model.safetensors"),
    ("safetensors unknown dtype", lambda d: safetensors_header(d / "magvit/model.safetensors",
                                                               lambda h: every_tensor(h, dtype="F7")),
     "magvit/model.safetensors"),
    ("safetensors data cut", lambda d: cut(d / "magvit/model.safetensors", 0.9), "magvit/model.safetensors"),
    ("safetensors offsets past the end", lambda d: safetensors_header(
        d / "magvit/model.safetensors", lambda h: every_tensor(h, data_offsets=[2 ** 40, 2 ** 40 + 4])),
     "magvit/model.safetensors"),
    ("safetensors dtype says I32 for F32 bytes", lambda d: safetensors_header(
        d / "magvit/model.safetensors", lambda h: every_tensor(h, dtype="I32")), "magvit"),
    ("safetensors two tensors share bytes", lambda d: safetensors_header(
        d / "magvit/model.safetensors", share_first_two_tensors), "magvit/model.safetensors"),
    ("safetensors bytes no tensor owns", lambda d: (d / "magvit/model.safetensors").write_bytes(
        (d / "magvit/model.safetensors").read_bytes() + b"\x00" * 64), "magvit/model.safetensors"),
    ("vocab cut", lambda d: cut(d / "phi/vocab.json"), "phi/vocab.json"),
    ("vocab a list", lambda d: (d / "phi/vocab.json").write_text('["a", "b"]'), "phi/vocab.json"),
    ("merges not text", lambda d: (d / "phi/merges.txt").write_bytes(b"#version: 0.2\n\xff\xfe\x00 a\n"),
     "phi/merges.txt"),
    ("merges not pairs", lambda d: (d / "phi/merges.txt").write_text("#version: 0.2\na b c\n"), "phi/merges.txt"),
]


@pytest.mark.parametrize("damage, names", [case[1:] for case in CONVERT_CASES],
                         ids=[case[0] for case in CONVERT_CASES])
def test_a_damaged_download_is_one_line_naming_the_file(layout, tmp_path, damage, names):
    directory = tmp_path / "released"
    shutil.copytree(layout, directory)
    damage(directory)
    message = convert(directory, tmp_path / "showo.pt")
    assert_one_line(message, directory / names)
    assert "again" in message                                 # says what to do
    assert not (tmp_path / "showo.pt").exists() and not list(tmp_path.glob("*.tmp"))


def test_the_undamaged_layout_converts(layout, saved):
    """The cases above fail because of their damage, not because the layout was bad."""
    assert saved.exists()


# ---- the output of convert -------------------------------------------------------------

@pytest.mark.parametrize("where", ["existing folder", "missing folder", "below a file"])
def test_an_unusable_out_fails_before_reading_weights(tmp_path, capsys, where):
    out = {"existing folder": tmp_path,
           "missing folder": tmp_path / "nowhere" / "showo.pt",
           "below a file": tmp_path / "file.txt" / "showo.pt"}[where]
    (tmp_path / "file.txt").write_text("")
    # No layout at all: an error about the weights would mean they were read first.
    message = convert(tmp_path / "absent", out)
    assert_one_line(message, "--out")
    assert "reading" not in capsys.readouterr().out
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_failed_write_is_one_line_and_leaves_no_temporary_file(layout, tmp_path, monkeypatch):
    def disk_full(blob, target):
        Path(target).write_bytes(b"half a file")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file\n"
                           "data/3: file write failed")
    monkeypatch.setattr(torch, "save", disk_full)
    message = convert(layout, tmp_path / "showo.pt")
    assert_one_line(message, tmp_path / "showo.pt")
    assert list(tmp_path.iterdir()) == []


def test_two_processes_saving_one_path_use_different_temporary_names(tmp_path, monkeypatch, saved):
    model, vq, text_tokenizer, _ = load_checkpoint(saved)
    written = []
    monkeypatch.setattr(torch, "save", lambda blob, target: (written.append(Path(target)),
                                                             Path(target).write_bytes(b"x")))
    for pid in (1234, 5678):
        monkeypatch.setattr(checkpoint.os, "getpid", lambda pid=pid: pid)
        save_checkpoint(tmp_path / "same.pt", model, vq, text_tokenizer)
    assert written[0] != written[1] and all(t.parent == tmp_path for t in written)
    assert [p.name for p in tmp_path.iterdir()] == ["same.pt"]


# ---- loading a checkpoint --------------------------------------------------------------

def stored_blob(path):
    """The checkpoint's dict, tensors in memory (the file is small)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def test_flipped_bytes_are_found_and_name_the_tensor(saved, tmp_path):
    """4 KiB of 0xFF in the middle of the largest tensor: refused by its checksum."""
    damaged = tmp_path / "flipped.pt"
    shutil.copy(saved, damaged)
    with zipfile.ZipFile(damaged) as archive:
        member = max((m for m in archive.infolist() if "/data/" in m.filename), key=lambda m: m.file_size)
    with open(damaged, "r+b") as f:
        f.seek(member.header_offset)
        name_length, extra_length = struct.unpack("<HH", f.read(30)[26:30])
        f.seek(member.header_offset + 30 + name_length + extra_length + member.file_size // 2)
        f.write(b"\xff" * 4096)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(damaged)
    message = str(error.value)
    assert_one_line(message, damaged, "checksum mismatch")
    tensor = message.split("tensor ")[1].split(" ")[0]
    blob = stored_blob(saved)
    stored = {**blob["showo"], **blob["vq"]}[tensor]
    assert stored.numel() * stored.element_size() == member.file_size     # the tensor that was hit


def rewritten(saved, path, change):
    """The checkpoint as a dict, changed, and written back with torch.save."""
    blob = stored_blob(saved)
    change(blob)
    torch.save(blob, path)
    return path


def test_nan_weights_are_refused_naming_the_tensor(saved, tmp_path):
    def diverge(blob):
        blob["showo"]["blocks.0.attn.q.weight"][0, 0] = float("nan")
        del blob["checksums"]                  # as a diverged run would have written them: matching
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(rewritten(saved, tmp_path / "nan.pt", diverge))
    assert_one_line(str(error.value), "blocks.0.attn.q.weight", "NaN/inf", "earlier checkpoint")


def test_inf_in_a_saved_bf16_checkpoint_is_refused(saved, tmp_path):
    """Checksums cover the bytes as written, after the cast to bf16; inf is still found."""
    model, vq, text_tokenizer, _ = load_checkpoint(saved)
    with torch.no_grad():
        model.norm_f.weight[3] = float("inf")
    save_checkpoint(tmp_path / "inf.pt", model, vq, text_tokenizer, dtype=torch.bfloat16)
    with pytest.raises(CheckpointError, match="norm_f.weight holds NaN/inf"):
        load_checkpoint(tmp_path / "inf.pt")


def test_a_checkpoint_from_before_checksums_still_loads(saved, tmp_path):
    old = rewritten(saved, tmp_path / "old.pt", lambda blob: blob.pop("checksums"))
    model, _, _, _ = load_checkpoint(old)
    assert torch.equal(model.embed.weight, stored_blob(saved)["showo"]["embed.weight"])


class NotAWeight:
    pass


@pytest.mark.parametrize("payload", ["folder", "plain pickle", "custom class"])
def test_what_is_not_a_checkpoint_file_is_one_line(tmp_path, payload):
    path = tmp_path / "thing.pt"
    if payload == "folder":
        path.mkdir()
    elif payload == "plain pickle":
        path.write_bytes(pickle.dumps({"showo": [1, 2, 3]}))
    else:
        torch.save({"format": checkpoint.CHECKPOINT_FORMAT, "extra": NotAWeight()}, path)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert_one_line(message, path)
    assert "weights_only" not in message
    if payload == "folder":
        assert "is a folder: give a checkpoint file" in message


def test_a_damaged_tensor_record_in_a_torch_file_is_one_line(saved, tmp_path):
    """A pickle that names a storage the zip does not hold."""
    damaged = tmp_path / "missing-member.pt"
    with zipfile.ZipFile(saved) as source, zipfile.ZipFile(damaged, "w") as target:
        for member in source.infolist():
            if not member.filename.endswith("/data/0"):
                target.writestr(member.filename, source.read(member))
    with pytest.raises(CheckpointError) as error:
        read_torch_file(damaged)
    assert_one_line(str(error.value), damaged)


# (what was edited by hand, the change to the stored extra, what the one line must say)
EDITED_SETTINGS = [
    ("steps of a 4,000-hour run", lambda e: e["sampling"]["t2i"].update(steps=10 ** 9), "t2i steps = 1000000000"),
    ("NaN guidance", lambda e: e["sampling"]["t2i"].update(guidance=float("nan")), "guidance = nan"),
    ("steps as a string", lambda e: e["sampling"]["inpainting"].update(steps="16"), "inpainting steps = '16'"),
    ("an unknown setting", lambda e: e["sampling"]["t2i"].update(speed=2), "sampling setting 'speed'"),
    ("a template with other fields", lambda e: e.update(question_template="{0} {nope}"), "question_template"),
    ("a template without the question", lambda e: e.update(question_template="hello"), "question_template"),
    ("an unknown reader", lambda e: e.update(mmu_features="bogus"), "mmu_features = 'bogus'"),
    ("an unknown objective", lambda e: e.update(image_objective="diffusion"), "image_objective = 'diffusion'"),
    ("a stories flag its recipe contradicts", lambda e: e.update(stories=True, train_config={"batch_story": 0}),
     "contradicts"),
    ("an unknown task", lambda e: e.update(tasks=["draw", "fly"]), "tasks = ['draw', 'fly']"),
]


@pytest.mark.parametrize("edit, expected", [case[1:] for case in EDITED_SETTINGS],
                         ids=[case[0] for case in EDITED_SETTINGS])
def test_hand_edited_stored_settings_are_refused_at_load_in_one_line(saved, tmp_path, edit, expected):
    """A checkpoint's stored defaults are held to the command line's limits (cli.LIMITS), and
    its flags to the values the code knows: refused when loaded, never a traceback later."""
    edited = rewritten(saved, tmp_path / "edited.pt", lambda blob: edit(blob["extra"]))
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(edited)
    assert_one_line(str(error.value), edited, expected)
    assert "edited or damaged" in str(error.value)


def loading_torch(pid):
    """Whether process `pid` has begun to load torch's libraries (so its own first lines ran)."""
    try:
        return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc to see the imports start")
def test_interrupting_a_command_while_it_starts_is_one_line(tmp_path):
    """Ctrl-C while torch is still loading: a line, not a traceback."""
    command = [sys.executable, "checkpoint.py", "convert", "--showo", "x", "--magvit", "x", "--tokenizer", "x",
               "--out", str(tmp_path / "x.pt")]
    started = subprocess.Popen(command, cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 30
    while not loading_torch(started.pid) and started.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    started.send_signal(signal.SIGINT)
    output, _ = started.communicate(timeout=60)
    assert "Traceback" not in output and "interrupted" in output, output[-2000:]
    assert started.returncode != 0

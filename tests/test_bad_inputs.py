"""Hostile but fair input to every command line: one clear line, never a traceback.

Each row of CASES runs a CLI's `main(argv)` in-process and asserts a non-zero exit, a
message of one line that names what is wrong, and no traceback. The tests after the table
check the cases where the right answer is a behaviour rather than an error (the grid goes
to --out, a resumed run keeps its data, a diverged run keeps its last finite checkpoint).
Damaged files (cut downloads, corrupted checkpoints) are in test_damaged_files.py.
"""

import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import attention
import bench
import checkpoint
import commands
import data
import evaluate
import sampling
import train
from tensor_files import materialize

CLIS = {"sampling": sampling.main, "train": train.main, "convert": checkpoint.main, "bench": bench.main,
        "evaluate": evaluate.main, "attention": attention.main}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Paths the cases refer to as {name}: a trained micro run, a release-like checkpoint, pictures."""
    root = tmp_path_factory.mktemp("hostile")
    train.main(["--preset", "micro", "--steps", "2", "--no-eval", "--out-dir", str(root / "run")])
    train.main(["--preset", "micro", "--steps", "2", "--no-eval", "--set", "batch_story=2", "--set", "train_stories=8",
                "--out-dir", str(root / "story")])
    train.main(["--preset", "micro", "--steps", "2", "--no-eval", "--image-objective", "ar",
                "--out-dir", str(root / "ar")])
    train.main(["--preset", "micro", "--steps", "2", "--no-eval", "--set", "batch_mmu=0", "--set", "batch_story=2",
                "--set", "train_stories=8", "--out-dir", str(root / "story_only")])
    train.main(["--preset", "micro", "--steps", "2", "--no-eval", "--set", "mmu_features=contrastive",
                "--set", "contrastive_steps=2", "--out-dir", str(root / "contrastive")])
    model, vq, text_tokenizer, _ = checkpoint.load_checkpoint(root / "run" / "micro.pt")
    checkpoint.save_checkpoint(root / "converted.pt", model, vq, text_tokenizer)   # no training state
    picture = data.make_examples(1, seed=0)[0].image
    Image.fromarray(picture).save(root / "picture.png")
    Image.fromarray(np.zeros_like(picture)).save(root / "black.png")
    (root / "text.png").write_text("not a picture")
    (root / "notes.txt").write_text("hello")
    (root / "empty.txt").write_text("\n \n")
    (root / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (root / "folder").mkdir()
    (root / "afile").write_text("")
    # an out-dir holding another preset's run, and one whose run is "alive" (our parent's pid)
    (root / "other_preset").mkdir()
    shutil.copy(root / "run" / "micro.pt", root / "other_preset" / "tiny.pt")
    (root / "converted_run").mkdir()
    shutil.copy(root / "converted.pt", root / "converted_run" / "micro.pt")
    (root / "locked").mkdir()
    (root / "locked" / "train.lock").write_text(str(os.getppid()))
    # a contrastive-reader checkpoint that lost the encoder its understanding reads through
    model, vq, text_tokenizer, extra = checkpoint.load_checkpoint(root / "contrastive" / "micro.pt")
    extra = materialize(extra)
    del extra["train_state"]["readers"]["contrastive"]
    checkpoint.save_checkpoint(root / "no_encoder.pt", model, vq, text_tokenizer, extra)
    return {"ckpt": root / "run" / "micro.pt", "story": root / "story" / "micro.pt",
            "no_encoder": root / "no_encoder.pt",
            "ar": root / "ar" / "micro.pt", "story_only": root / "story_only" / "micro.pt", "run": root / "run", "converted": root / "converted.pt",
            "png": root / "picture.png", "black": root / "black.png", "textpng": root / "text.png",
            "txt": root / "notes.txt", "empty": root / "empty.txt", "binary": root / "binary.txt",
            "dir": root / "folder", "file": root / "afile", "other_preset": root / "other_preset",
            "converted_run": root / "converted_run", "locked": root / "locked", "tmp": root}


S = ["--ckpt", "{ckpt}", "--prompt", "a red circle in the center", "--out", "{tmp}/x.png"]   # a valid draw
Q = ["--ckpt", "{ckpt}", "--image", "{png}", "--question"]                                  # a valid ask, + text
T = ["--preset", "micro", "--out-dir", "{tmp}/t"]                                           # a valid train start

CASES = [
    # sampling.py: the checkpoint
    ("sampling", ["--ckpt", "{tmp}/missing.pt", "--prompt", "a red circle"], "not found"),
    ("sampling", ["--ckpt", "{dir}", "--prompt", "a red circle"], "is a folder"),
    ("sampling", ["--ckpt", "{txt}", "--prompt", "a red circle"], "not a readable torch checkpoint"),
    ("sampling", ["--ckpt", "{ckpt}", "--prompt", "a red circle", "--device", "cuda"], "cuda"),
    # sampling.py: values, each with its range
    ("sampling", [*S, "--guidance", "nan"], "--guidance nan"),
    ("sampling", [*S, "--guidance", "inf"], "--guidance inf"),
    ("sampling", [*S, "--guidance", "-3"], "--guidance -3"),
    ("sampling", [*S, "--top-k", "-3"], "--top-k -3"),
    ("sampling", [*Q, "what?", "--top-k", "100000"], "chooses among"),
    ("sampling", [*S, "--top-k", "5"], "drop --top-k"),
    ("sampling", [*S, "--temperature", "nan"], "--temperature nan"),
    ("sampling", [*S, "--code-temperature", "0"], "--code-temperature 0"),
    ("sampling", [*Q, "what color is the circle?", "--code-temperature", "0.5"], "drop --code-temperature"),
    ("sampling", [*S, "--temperature", "inf"], "--temperature inf"),
    ("sampling", [*Q, "what color is the circle?", "--sample", "--temperature", "nan"], "--temperature nan"),
    ("sampling", [*S, "--steps", "0"], "--steps 0"),
    ("sampling", [*S, "--steps", "100000"], "--steps 100000"),
    ("sampling", [*S, "--steps", "500"], "image tokens"),
    ("sampling", [*S, "--seed", str(2 ** 64)], "--seed"),
    ("sampling", [*S, "--seed", "-1"], "--seed -1"),
    ("sampling", [*Q, "what?", "--max-new-tokens", "0"], "--max-new-tokens 0"),
    # sampling.py: options that do not go together
    ("sampling", [*Q, ""], "--question is empty"),
    ("sampling", [*Q, "   "], "--question is empty"),
    ("sampling", ["--ckpt", "{ckpt}", "--question", "what?"], "--question needs --image"),
    ("sampling", [*Q, "what?", "--prompt", "a red circle"], "drop --prompt"),
    ("sampling", ["--ckpt", "{ckpt}", "--image", "{png}", "--prompt", "a red circle"], "--image needs"),
    ("sampling", ["--ckpt", "{ckpt}", "--mask", "{png}", "--prompt", "a red circle"], "need --image"),
    ("sampling", ["--ckpt", "{ckpt}", "--image", "{png}", "--mask", "{png}", "--extend", "left",
                  "--prompt", "a red circle"], "not both"),
    ("sampling", ["--ckpt", "{ckpt}", "--image", "{png}", "--mask", "{png}", "--prompt", "a red circle",
                  "--film", "{tmp}/f.png"], "--film draws"),
    ("sampling", ["--ckpt", "{ckpt}", "--prompt", ""], "--prompt is empty"),
    ("sampling", ["--ckpt", "{ckpt}"], "nothing to do"),
    ("sampling", ["--ckpt", "{ckpt}", "--prompt", "a red circle " * 12], "shorten it"),
    # sampling.py: files in and out
    ("sampling", ["--ckpt", "{ckpt}", "--prompts-file", "{tmp}/missing.txt"], "not found"),
    ("sampling", ["--ckpt", "{ckpt}", "--prompts-file", "{empty}"], "nothing to do"),
    ("sampling", ["--ckpt", "{ckpt}", "--prompts-file", "{binary}"], "UTF-8"),
    ("sampling", ["--ckpt", "{ckpt}", "--image", "{textpng}", "--question", "what?"], "cannot read image"),
    ("sampling", ["--ckpt", "{ckpt}", "--image", "{dir}", "--question", "what?"], "is a folder"),
    ("sampling", ["--ckpt", "{ckpt}", "--image", "{png}", "--mask", "{black}", "--prompt", "a red circle",
                  "--out", "{tmp}/y.png"], "selects nothing"),
    ("sampling", ["--ckpt", "{ckpt}", "--prompt", "a red circle", "--out", "{dir}"], "is a folder"),
    ("sampling", ["--ckpt", "{ckpt}", "--prompt", "a red circle", "--out", "{tmp}/x.txt"], "ending in"),
    ("sampling", ["--ckpt", "{ckpt}", "--prompt", "a red circle", "--out", "{tmp}/no/such/x.png"], "does not exist"),
    ("sampling", ["--ckpt", "{ckpt}", "--prompt", "a red circle", "--film", "{dir}"], "is a folder"),
    ("sampling", ["--ckpt", "{ckpt}", "--prompt", "a red circle", "--out-dir", "{file}"], "is a file"),
    # sampling.py: stories
    ("sampling", ["--ckpt", "{ckpt}", "--story", "a red circle at the top left"], "never trained to tell"),
    ("sampling", ["--ckpt", "{story}", "--story", "a red circle at the top left", "--frames", "0"], "--frames 0"),
    ("sampling", ["--ckpt", "{story}", "--story", "a red circle at the top left", "--frames", "99"], "--frames 99"),
    ("sampling", [*Q, "what color is the circle?", "--story", "a red circle"], "drop --question"),
    ("sampling", ["--ckpt", "{story}", "--prompt", "a red circle", "--frames", "3"], "give --story"),
    ("sampling", ["--ckpt", "{story}", "--story", "  "], "--story is empty"),
    ("sampling", ["--ckpt", "{story}", "--story", "a red circle " * 20], "shorten it"),
    ("sampling", ["--ckpt", "{story}", "--story", "a red circle", "--image", "{textpng}"], "cannot read image"),
    ("sampling", ["--ckpt", "{story}", "--story", "a red circle", "--out", "{tmp}/story.txt"], "ending in"),
    # the representation ablation's checkpoints (train.py mmu_features)
    ("sampling", ["--ckpt", "{no_encoder}", "--image", "{png}", "--question", "what?"], "does not hold"),
    ("evaluate", ["scores", "--ckpt", "{no_encoder}"], "does not hold"),
    # train.py: every field of TrainConfig is checked before any work
    ("train", [*T, "--set", "lr=inf"], "lr = inf: must be a finite number"),
    ("train", [*T, "--set", "lr=1e6"], "lr = 1000000.0: must be in"),
    ("train", [*T, "--set", "guidance=nan"], "guidance = nan"),
    ("train", [*T, "--set", "vq_ch_mult=0,1"], "vq_ch_mult 0,1"),
    ("train", [*T, "--set", "bpe_vocab_size=10"], "bpe_vocab_size = 10"),
    ("train", [*T, "--set", "vq_z_channels=30"], "vq_z_channels = 30"),
    ("train", [*T, "--set", "loss_t2i=-1"], "loss_t2i = -1.0"),
    ("train", [*T, "--set", "max_text_len=1"], "max_text_len = 1"),
    ("train", [*T, "--set", "steps=0"], "steps = 0"),
    ("train", [*T, "--set", "min_lr=0.5"], "above lr"),
    ("train", [*T, "--set", "hidden_size=30"], "head size"),
    ("train", [*T, "--set", "loss_t2i=0", "--set", "loss_lm=0", "--set", "loss_mmu=0"], "nothing would be trained"),
    ("train", [*T, "--set", "caption_dropout=1"], "caption_dropout = 1.0"),
    ("train", [*T, "--set", "no_such_field=1"], "NAME one of"),
    ("train", [*T, "--set", "lr=fast"], "expected float"),
    ("train", [*T, "--seed", "-1"], "seed = -1"),
    ("train", [*T, "--set", "batch_story=4"], "set both or neither"),
    ("train", [*T, "--set", "mmu_features=clip"], "mmu_features = 'clip'"),
    ("train", [*T, "--set", "batch_t2i=0", "--set", "batch_mmu=0", "--set", "batch_lm=0"], "nothing would be trained"),
    ("train", [*T, "--set", "batch_story=4", "--set", "train_stories=9", "--image-objective", "ar"], "drop image_objective"),
    ("train", [*T, "--device", "cuda"], "cuda"),
    # train.py: starting points and folders
    ("train", ["--preset", "micro", "--out-dir", "{tmp}/nothing_here", "--resume"], "nothing to resume"),
    ("train", ["--preset", "micro", "--out-dir", "{converted_run}", "--resume"], "holds no training run"),
    ("train", ["--preset", "tiny", "--out-dir", "{other_preset}", "--resume"], "is a run of --preset micro"),
    ("train", ["--preset", "micro", "--out-dir", "{run}", "--resume", "--data-dir", "{dir}"], "resume without --data-dir"),
    ("train", ["--preset", "micro", "--out-dir", "{run}", "--resume", "--set", "lr=0.1"], "drop --set"),
    ("train", [*T, "--init", "{dir}"], "is a folder"),
    ("train", [*T, "--tokenizers-from", "{dir}"], "is a folder"),
    ("train", [*T, "--init", "{tmp}/missing.pt"], "not found"),
    ("train", [*T, "--init", "{ckpt}", "--tokenizers-from", "{ckpt}"], "drop --tokenizers-from"),
    ("train", ["--preset", "micro", "--out-dir", "{file}"], "is a file"),
    ("train", [*T, "--data-dir", "{tmp}/missing"], "expected a folder of images"),
    ("train", ["--preset", "micro", "--out-dir", "{locked}"], "another run (pid"),
    # bench.py and evaluate.py
    ("bench", ["inference", "--hidden", "0"], "--hidden 0"),
    ("bench", ["inference", "--steps", "0"], "--steps 0"),
    ("bench", ["compare", "--mtp", "{dir}", "--ar", "{ckpt}"], "is a folder"),
    ("bench", ["compare", "--mtp", "{ckpt}", "--ar", "{ar}", "--pictures", "0"], "--pictures 0"),
    ("bench", ["compare", "--mtp", "{ckpt}", "--ar", "{ar}", "--mtp-set", "speed=1"], "NAME is one of"),
    ("evaluate", ["lfq", "--ckpt", "{tmp}/missing.pt"], "not found"),
    ("evaluate", ["scores", "--ckpt", "{converted}"], "not trained by train.py"),
    ("evaluate", ["lfq", "--ckpt", "{ckpt}", "--png", "{dir}"], "is a folder"),
    # attention.py: the figures' folder
    ("attention", ["--png", "{file}"], "is a file"),
    ("attention", ["--png", "{file}/masks"], "is a file"),
    ("attention", ["--png", ""], "--png is empty"),
    # tasks a checkpoint was never trained for, settings it cannot use, inputs that are not files
    ("sampling", ["--ckpt", "{story_only}", "--image", "{png}", "--question", "what?"], "never trained to answer"),
    ("sampling", ["--ckpt", "{ar}", "--prompt", "a red circle", "--steps", "4", "--out", "{tmp}/ar.png"],
     "drop --steps"),
    ("sampling", ["--ckpt", "/dev/zero", "--prompt", "a red circle"], "not a regular file"),
    ("train", ["--preset", "micro", "--set", "batch_story=2", "--set", "train_stories=8", "--data-dir", "{dir}",
               "--out-dir", "{tmp}/s"], "need the shapes world's stories"),
    ("train", ["--preset", "story", "--set", "mmu_features=contrastive", "--out-dir", "{tmp}/s"],
     "reads its frames as codes"),
    ("train", ["--preset", "tiny", "--set", "batch_mmu=0", "--set", "mmu_features=contrastive", "--out-dir", "{tmp}/s"],
     "has none (batch_mmu = 0)"),
    ("train", ["--preset", "story", "--set", "vq_local_window=12", "--out-dir", "{tmp}/s"], "vq_local_window 12: give 0"),
    ("bench", ["compare", "--mtp", "{ckpt}", "--ar", "{tmp}/missing.pt"], "--ar: checkpoint"),
    ("bench", ["compare", "--mtp", "{ckpt}", "--ar", "{ckpt}"], "draws with image_objective mtp: give a checkpoint"),
    ("bench", ["compare", "--mtp", "{ar}", "--ar", "{ar}"], "draws with image_objective ar: give a checkpoint"),
    ("evaluate", ["probe", "--ckpt", "{ckpt}", "--pictures", "19"], "--pictures 19"),
    ("evaluate", ["reach", "--ckpt", "{tmp}/missing.pt"], "not found"),
    # checkpoint.py convert: the folders it is given (damaged contents: test_damaged_files.py)
    ("convert", ["convert", "--showo", "{tmp}/missing", "--magvit", "{dir}", "--tokenizer", "{dir}",
                 "--out", "{tmp}/c.pt"], "not found"),
    ("convert", ["convert", "--showo", "{dir}", "--magvit", "{dir}", "--tokenizer", "{dir}",
                 "--out", "{dir}"], "is a folder"),
]


def run_cli(cli, argv, files, capsys):
    """(exit code, stderr + stdout) of one CLI call; the code is None when it returned normally."""
    argv = [str(a).format(**files) for a in argv]
    try:
        CLIS[cli](argv)
        code = None
    except SystemExit as stop:
        code = stop.code
        if isinstance(code, str):
            print(code, file=__import__("sys").stderr)
            code = 1
    out = capsys.readouterr()
    return code, out.err.strip()


@pytest.mark.parametrize("cli, argv, expected", CASES, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(CASES)])
def test_bad_input_is_one_clear_line(cli, argv, expected, files, capsys):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("CUDA is present here")
    code, message = run_cli(cli, argv, files, capsys)
    assert code not in (None, 0), f"{cli} {argv} exited 0"
    lines = [line for line in message.splitlines() if line.strip() and not line.startswith("warning:")]
    assert lines and "Traceback" not in message, message
    assert len(lines) == 1, f"more than one line:\n{message}"
    assert expected in lines[0], f"expected {expected!r} in: {lines[0]}"


def test_the_table_covers_every_cli_with_enough_cases():
    assert len(CASES) >= 60
    assert {cli for cli, _, _ in CASES} == set(CLIS)


# ---- the silent cases: the right behaviour, not just an error ----------------------------

def test_several_prompts_with_out_write_their_grid_there(files, tmp_path, capsys):
    out = tmp_path / "two.png"
    code, _ = run_cli("sampling", ["--ckpt", "{ckpt}", "--prompt", "a red circle", "--prompt", "a blue square",
                                   "--out", str(out)], files, capsys)
    assert code is None and out.is_file()
    assert list(tmp_path.iterdir()) == [out]                 # no loose 000.png / grid.png beside it
    width, height = Image.open(out).size
    assert width == 2 * height                               # two pictures side by side


def test_ctrl_c_while_sampling_is_one_line(files, monkeypatch, capsys, tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(commands, "draw", interrupted)
    code, message = run_cli("sampling", [*S[:4], "--out", str(tmp_path / "x.png")], files, capsys)
    assert code and message == "interrupted: nothing was written"
    assert not list(tmp_path.iterdir())


def test_ctrl_c_in_the_tokenizer_stages_says_nothing_was_saved(files, monkeypatch, capsys, tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(commands, "train_tokenizers", interrupted)
    code, message = run_cli("train", ["--preset", "micro", "--out-dir", str(tmp_path)], files, capsys)
    assert code == 130 and "nothing was saved" in message and len(message.splitlines()) == 1
    assert not (tmp_path / "micro.pt").exists() and not (tmp_path / "micro.pt.lock").exists()


def test_a_diverging_run_stops_at_the_first_nan_and_keeps_its_last_finite_checkpoint(monkeypatch, capsys, tmp_path):
    real_loss = train.mixed_loss

    def nan_from_step_3(forward, parts, tc, device):
        total, losses = real_loss(forward, parts, tc, device)
        if len(calls) >= 3:
            losses = {kind: float("nan") for kind in losses}
        calls.append(1)
        return total, losses
    calls = []
    monkeypatch.setattr(train, "mixed_loss", nan_from_step_3)
    code, message = run_cli("train", ["--preset", "micro", "--set", "save_every=2", "--no-eval",
                                      "--out-dir", str(tmp_path)], {}, capsys)
    last = message.splitlines()[-1]                          # after the progress bars
    assert code and last.startswith("error: the loss is not finite at step 3") and "diverged" in last
    model, _, _, extra = checkpoint.load_checkpoint(tmp_path / "micro.pt")
    assert extra["train_state"]["step"] == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_resume_keeps_the_data_the_run_was_started_on(monkeypatch, capsys, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    lines = []
    for i, example in enumerate(data.make_examples(6, seed=1)):
        Image.fromarray(example.image).save(folder / f"{i}.png")
        lines.append(f'{{"image": "{i}.png", "caption": "{example.caption}"}}')
    (folder / "captions.jsonl").write_text("\n".join(lines))
    real_batch = train.MixedBatches.batch

    def ctrl_c_at_step_3(self, step):
        if step == 3:
            raise KeyboardInterrupt
        return real_batch(self, step)
    monkeypatch.setattr(train.MixedBatches, "batch", ctrl_c_at_step_3)
    code, _ = run_cli("train", ["--preset", "micro", "--set", "steps=5", "--data-dir", str(folder),
                                "--out-dir", str(tmp_path / "out")], {}, capsys)
    assert code == 130
    monkeypatch.setattr(train.MixedBatches, "batch", real_batch)
    used = []
    real_training_set = commands.training_set
    monkeypatch.setattr(commands, "training_set", lambda *a: used.append(a[0]) or real_training_set(*a))
    code, _ = run_cli("train", ["--preset", "micro", "--resume", "--out-dir", str(tmp_path / "out")], {}, capsys)
    assert code is None and used == [str(folder)]
    extra = checkpoint.load_checkpoint(tmp_path / "out" / "micro.pt")[3]
    assert extra["train_state"]["step"] == 5 and extra["train_state"]["data_dir"] == str(folder)


def test_resuming_a_run_whose_stored_recipe_was_edited_is_one_line(files, capsys, tmp_path):
    """A resumed run goes on with the recipe its checkpoint stores: that recipe is held to
    the same table as the command line's (cli.check_recipe)."""
    (tmp_path / "edited").mkdir()
    blob = torch.load(files["ckpt"], map_location="cpu", weights_only=True)
    blob["extra"]["train_config"]["lr"] = float("nan")
    torch.save(blob, tmp_path / "edited" / "micro.pt")
    code, message = run_cli("train", ["--preset", "micro", "--resume", "--out-dir", str(tmp_path / "edited")],
                            files, capsys)
    assert code not in (None, 0) and "Traceback" not in message, message
    assert "stores a recipe no run can use (lr = nan: must be a finite number" in message, message

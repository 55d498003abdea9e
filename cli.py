"""The command line of every script: parsing options, checking values, probing output paths,
and the one way a command ends early (one line, never a traceback).

nanoGPT keeps its `configurator.py` apart from the model and the training loop; this file
does the same for all of them, so the paper's files raise ordinary exceptions and this
layer turns them into `error: ...`. Each script's `main` lands here:

    python train.py --tiny                 train_command
    python sampling.py --ckpt ...          sampling_command (the work of each task: commands.py)
    python evaluate.py scores|...|stories  evaluate_command
    python bench.py inference|loading|compare bench_command
    python checkpoint.py convert ...       checkpoint_command
    python model.py / python attention.py  model_command / attention_command

Read first: README.md (every command, with examples).
"""

import argparse
import math
import os
import signal
import sys
import tempfile
from contextlib import contextmanager, nullcontext
from dataclasses import fields, replace
from pathlib import Path

import torch

import bench
import data
import evaluate
from checkpoint import DEFAULT_SETTINGS, DTYPES, SETTING_LIMITS, convert, read_checkpoint_file
from commands import config_from_dict, sample, train_run
from distributed import Process
from model import ShowoConfig, parameter_report
from pictures import MASK_NAMES, mask_examples, mask_picture, save_picture, show_mask
from readers import MMU_FEATURES
from tensor_files import CheckpointError, first_line
from train import PRESETS, Diverged


# ----------------------------------------------------------------------------------------
# What every command shares: one-line errors, the device, outputs checked before any work
# ----------------------------------------------------------------------------------------

class UsageError(ValueError):
    """Bad input from the user: a file, a flag, a value. The message is one line that says
    what to do; every command prints it as `error: ...` and exits."""


def exit_with_one_line(job, *args, interrupted=lambda: "interrupted: nothing was written"):
    """Run a command's job; bad input (UsageError, and the ValueError and OSError that the
    science code raises with one-line messages) and Ctrl-C end it with one line on stderr and
    a non-zero exit, never a traceback. interrupted() says what Ctrl-C left behind. The one
    way every command of the project ends early."""
    signal.signal(signal.SIGINT, signal.default_int_handler)   # Ctrl-C is KeyboardInterrupt again (the scripts'
    try:                                                         # guard covered only their imports)
        return job(*args)
    except (ValueError, OSError) as error:
        sys.exit(f"error: {first_line(error)}")
    except KeyboardInterrupt:
        print(f"\n{interrupted()}", file=sys.stderr)
        sys.exit(130)


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
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{what}: {folder} is a file, not a folder: choose another place")
    if not folder.is_dir():
        raise UsageError(f"{what}: the folder {folder} does not exist: create it first or choose another place")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe-"):
            pass
    except OSError as error:
        raise UsageError(f"{what}: cannot write in {folder} ({error.strerror}): choose another place") from None


def check_writable_file(path, what, create=False):
    """The same for an output file: not an existing folder, and its folder takes new files
    (create=True: or will be made)."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{what} {path} is a folder: give a file name in it")
    check_writable_folder(path.parent, what, create)


PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def check_output(path, what, create=False):
    """Refuse, before any work, an output picture that cannot be written: wrong suffix, a
    folder, a missing (unless create) or read-only folder."""
    path = Path(path)
    check_writable_file(path, what, create)
    if path.suffix.lower() not in PICTURE_SUFFIXES:
        raise UsageError(f"{what} {path}: give a file name ending in {' or '.join(PICTURE_SUFFIXES)}")
    return path


@contextmanager
def one_writer(folder):
    """Hold FOLDER/train.lock (holding our pid) while a run writes into FOLDER; refuse a second
    live writer.

    Two training runs in one --out-dir, of one preset or of two, would overwrite each other's
    checkpoint, samples.png and curves.png. A lock left by a process that does not exist
    (a killed run) is taken over.
    """
    lock = Path(folder) / "train.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            owner = lock.read_text().strip() if lock.is_file() else ""
            if owner.isdigit() and process_exists(int(owner)):
                raise UsageError(f"another run (pid {owner}) is writing into {folder}: wait for it to finish, "
                                 f"or give this one another --out-dir") from None
            lock.unlink(missing_ok=True)
    else:
        raise UsageError(f"cannot take the lock {lock}: remove it if no run is writing into {folder}")
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


def check_number(flag, value, low, high, meaning):
    """A number given on the command line (or stored as a default) must be finite and in range."""
    if value is not None and not (math.isfinite(value) and low <= value <= high):
        raise UsageError(f"{flag} {value}: the {meaning} must be a number in [{low:g}, {high:g}]")


# ----------------------------------------------------------------------------------------
# python train.py
# ----------------------------------------------------------------------------------------

# The allowed range of every number of a TrainConfig: (lowest, highest), both included.
# Floats must also be finite. The upper ends are where a run stops making sense on any
# machine (a 2^17-code image head, a learning rate that diverges at once), not tuning advice.
TRAIN_RANGES = {
    "seed": (0, 2 ** 63 - 1), "train_scenes": (1, 10 ** 7), "eval_draws": (1, 100),
    "eval_prompts": (0, 10 ** 5), "eval_scenes": (0, 10 ** 5), "bpe_vocab_size": (257, 2 ** 16),
    "vq_z_channels": (1, 16), "vq_ch": (1, 1024), "vq_groups": (1, 1024), "vq_steps": (1, 10 ** 7),
    "vq_batch": (1, 10 ** 5), "vq_lr": (1e-9, 1.0), "hidden_size": (4, 16384), "num_layers": (1, 256),
    "num_heads": (1, 256), "max_text_len": (4, 1024), "steps": (1, 10 ** 8), "batch_t2i": (0, 10 ** 5),
    "batch_mmu": (0, 10 ** 5), "batch_lm": (0, 10 ** 5), "batch_story": (0, 10 ** 5),
    "train_stories": (0, 10 ** 7), "contrastive_steps": (1, 10 ** 7), "mmu_questions": (1, 100),
    "lr": (1e-9, 1.0), "vq_local_window": (0, 1024),
    "min_lr": (0.0, 1.0), "warmup": (0, 10 ** 8), "weight_decay": (0.0, 1.0),
    "caption_dropout": (0.0, 0.99), "loss_t2i": (0.0, 1000.0), "loss_lm": (0.0, 1000.0),
    "loss_mmu": (0.0, 1000.0), "sample_steps": (1, 1000), "guidance": (0.0, 100.0),
    "sample_temperature": (0.0, 100.0), "sample_top_k": (0, 2 ** 16), "save_every": (1, 10 ** 8),
    "eval_every": (0, 10 ** 8), "sample_code_temperature": (0.01, 100.0), "loss_story_changes": (0.0, 1000.0),
}


def check_recipe(tc):
    """Raise UsageError (one line) for a TrainConfig no run can use: a value out of range or
    not a number of its kind, or fields that contradict each other. The command line's
    recipe and a checkpoint's stored one are checked alike."""
    for name, (low, high) in TRAIN_RANGES.items():
        value = getattr(tc, name)
        whole = isinstance(low, int)
        allowed = f"[{low:,}, {high:,}]" if whole else f"[{low:g}, {high:g}]"
        if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
            raise UsageError(f"{name} = {value!r}: must be a {'whole ' if whole else ''}number in {allowed}")
        if not math.isfinite(value):
            raise UsageError(f"{name} = {value}: must be a finite number in {allowed}")
        if not low <= value <= high:
            raise UsageError(f"{name} = {value}: must be in {allowed}")
    if tc.image_objective not in ("mtp", "ar"):
        raise UsageError(f"image_objective = {tc.image_objective!r}: choose mtp (Show-o) or ar")
    if tc.mmu_features not in MMU_FEATURES:
        raise UsageError(f"mmu_features = {tc.mmu_features!r}: choose one of {', '.join(MMU_FEATURES)}")
    # A kind of row trains something only if the batch holds some and its loss counts: a
    # recipe where no kind does would run for hours and learn nothing.
    trained = {"t2i": tc.batch_t2i and tc.loss_t2i, "mmu": tc.batch_mmu and tc.loss_mmu,
               "lm": tc.batch_lm and tc.loss_lm, "story": tc.batch_story and (tc.loss_t2i or tc.loss_mmu)}
    if not any(trained.values()):
        raise UsageError("no kind of row both has rows (batch_t2i, batch_mmu, batch_lm, batch_story) and a loss "
                         "weight above 0 (loss_t2i, loss_mmu, loss_lm): nothing would be trained")
    if tc.min_lr > tc.lr:
        raise UsageError(f"min_lr = {tc.min_lr} is above lr = {tc.lr}: the schedule decays from lr to min_lr")
    # Rotary embedding turns the first half of each head (Phi's partial_rotary_factor 0.5),
    # itself split in two halves (rotate-half): the head size must be a multiple of 4.
    if tc.hidden_size % tc.num_heads or (tc.hidden_size // tc.num_heads) % 4:
        raise UsageError(f"hidden_size {tc.hidden_size} / num_heads {tc.num_heads}: the head size "
                         f"must be a whole multiple of 4 (rotary embedding)")
    if tc.batch_story and tc.image_objective != "mtp":
        raise UsageError("story rows draw their frames by mask-token prediction: drop image_objective=ar")
    if bool(tc.batch_story) != bool(tc.train_stories):
        raise UsageError(f"batch_story = {tc.batch_story}, train_stories = {tc.train_stories}: "
                         f"story rows need stories to draw from, and stories need rows: set both or neither")
    if tc.mmu_features != "codes" and tc.batch_story:
        raise UsageError(f"mmu_features = {tc.mmu_features}: a story's writer reads its frames as codes, in the "
                         f"story rows themselves; drop it, or set batch_story=0")
    if tc.mmu_features != "codes" and not tc.batch_mmu:
        raise UsageError(f"mmu_features = {tc.mmu_features} changes what understanding rows read, and this "
                         f"recipe has none (batch_mmu = 0): drop it or set batch_mmu")
    if tc.vq_ch % tc.vq_groups:
        raise UsageError(f"vq_ch {tc.vq_ch} must be a multiple of vq_groups {tc.vq_groups}")
    if not 1 <= len(tc.vq_ch_mult) <= 6 or min(tc.vq_ch_mult) < 1 or max(tc.vq_ch_mult) > 64:
        raise UsageError(f"vq_ch_mult {','.join(map(str, tc.vq_ch_mult))}: give 1 to 6 width "
                         f"multipliers, each from 1 to 64 (e.g. 1,2,4)")
    # Each level after the first halves the picture: the code grid must come out whole.
    if data.IMAGE_SIZE % 2 ** (len(tc.vq_ch_mult) - 1):
        raise UsageError(f"vq_ch_mult {tc.vq_ch_mult}: {len(tc.vq_ch_mult) - 1} halvings do not "
                         f"divide {data.IMAGE_SIZE} px")
    window, code = tc.vq_local_window, 2 ** (len(tc.vq_ch_mult) - 1)   # a local window holds whole codes
    if window and (data.IMAGE_SIZE % window or window % code):
        raise UsageError(f"vq_local_window {window}: give 0 (the whole picture) or a window that tiles "
                         f"{data.IMAGE_SIZE} px and holds whole codes (a multiple of {code} px)")


def parse_field(name, text, current):
    """A --set value, read as the type the field already has ("1,2,4" for a tuple)."""
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if isinstance(current, tuple):
            return tuple(int(part) for part in text.split(","))
        return type(current)(text)
    except ValueError:
        raise UsageError(f"--set {name}={text}: expected {type(current).__name__} like {current!r}") from None


def override(tc, assignments):
    """TrainConfig with `--set name=value` assignments applied (any field of the dataclass)."""
    names = [f.name for f in fields(tc)]
    changes = {}
    for assignment in assignments:
        name, equals, text = assignment.partition("=")
        if not equals or name not in names:
            raise UsageError(f"--set {assignment}: expected NAME=VALUE, NAME one of {', '.join(names)}")
        changes[name] = parse_field(name, text, getattr(tc, name))
    return replace(tc, **changes)


def parse_train_args(argv):
    """The options of train.py. Every field of TrainConfig is reachable through --set, so the
    parser stays small; --seed, --steps and --image-objective are the shorthands people use."""
    p = argparse.ArgumentParser(description="Train a small Show-o (tokenizers + transformer).")
    p.add_argument("--tiny", action="store_true", help="the ~10 minute CPU recipe (the default preset)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="override any TrainConfig field, e.g. --set steps=800 --set vq_ch_mult=1,2,4")
    p.add_argument("--seed", type=int, help="shorthand for --set seed=N")
    p.add_argument("--steps", type=int, help="shorthand for --set steps=N (transformer steps)")
    p.add_argument("--image-objective", choices=["mtp", "ar"],
                   help="shorthand for --set image_objective=...: mtp (Show-o, the default) or ar (raster order)")
    p.add_argument("--out-dir", type=Path, default=Path("out"))
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--resume", action="store_true", help="continue OUT_DIR/PRESET.pt where it stopped")
    p.add_argument("--init", help="fine-tune from a converted checkpoint (python checkpoint.py convert)")
    p.add_argument("--tokenizers-from", help="reuse the text and image tokenizers of this checkpoint")
    p.add_argument("--data-dir", help="folder of your own images with captions.jsonl")
    p.add_argument("--no-eval", action="store_true", help="skip the held-out scores")
    return p.parse_args(argv)


def recipe(args):
    """(preset name, TrainConfig) from the preset and the overrides; ValueError when bad."""
    preset = "tiny" if args.tiny else args.preset
    shorthands = [f"{name}={value}" for name, value in (("seed", args.seed), ("steps", args.steps),
                                                        ("image_objective", args.image_objective))
                  if value is not None]
    tc = override(PRESETS[preset], shorthands + args.set)
    check_recipe(tc)
    return preset, tc


def check_train_arguments(args, tc, path):
    """Fail early, in one line, on options that cannot work together or files that cannot be used."""
    if args.data_dir and tc.batch_story:
        raise UsageError(f"--data-dir gives captioned pictures, and story rows (batch_story = {tc.batch_story}) "
                         f"need the shapes world's stories: drop --data-dir, or set batch_story=0 and "
                         f"train_stories=0")
    if args.resume and (args.init or args.tokenizers_from):
        raise UsageError("--resume continues a run as it was: drop --init / --tokenizers-from")
    if args.resume and (args.set or args.seed is not None or args.steps is not None or args.image_objective):
        raise UsageError("--resume keeps the checkpoint's recipe (same schedule, same data): "
                         "drop --set/--seed/--steps/--image-objective")
    if args.resume and not path.exists():
        raise UsageError(f"nothing to resume: {path} does not exist (start without --resume)")
    if args.resume:                     # the recipe a resumed run goes on with is the stored one: check it too
        stored = read_checkpoint_file(path)["extra"].get("train_config")
        if stored is not None:
            try:
                check_recipe(config_from_dict(stored))
            except UsageError as error:
                raise UsageError(f"{path} stores a recipe no run can use ({error}): start a new run") from None
    if args.init and args.tokenizers_from:
        raise UsageError("--init already brings its tokenizers: drop --tokenizers-from")
    if args.out_dir.exists() and not args.out_dir.is_dir():
        raise UsageError(f"--out-dir {args.out_dir} is a file: give a folder")
    check_writable_folder(args.out_dir, "--out-dir", create=True)


def train_command(argv=None):
    """python train.py: check the recipe and options, then train; every way a run can stop
    early is one line."""
    args = parse_train_args(argv)
    progress, process = {}, None

    def interrupted():
        # Ctrl-C: say what is on disk. The checkpoint holds the last finished step (saved
        # every save_every steps and on the way out), so a resume loses nothing.
        state = progress.get("state")
        if state and state.step:
            return (f"interrupted: step {state.step} of {state.tc.steps} saved in {progress['path']}; continue "
                    f"with: python train.py --preset {progress['preset']} --out-dir {args.out_dir} --resume")
        return ("interrupted before the first transformer step: nothing was saved (the tokenizer stages are "
                "not resumable; run the command again)")

    def job():
        nonlocal process
        preset, tc = recipe(args)
        path = args.out_dir / f"{preset}.pt"
        progress.update(path=path, preset=preset)
        check_train_arguments(args, tc, path)
        # Only now the process group (torchrun) and the folder lock: a refused command starts
        # nothing and leaves nothing behind.
        process = Process(pick_device(args.device))
        try:
            with one_writer(args.out_dir) if process.main else nullcontext():
                train_run(args, preset, tc, path, process, progress)
        except Diverged as stop:
            raise UsageError(f"{stop}; the last checkpoint with finite weights, if any, is {path}") from None
        finally:
            process.close()
    exit_with_one_line(job, interrupted=interrupted)


# ----------------------------------------------------------------------------------------
# python sampling.py
# ----------------------------------------------------------------------------------------

# The allowed range of every number on the command line: (lowest, highest, meaning), both
# included; floats must also be finite. Checked before anything is loaded
# (check_sampling_arguments), and again against the model once it is (commands.check_against_model).

LIMITS = {
    **SETTING_LIMITS,
    "max_new_tokens": (1, 4096, "answer tokens"),
    "seed": (0, 2 ** 63 - 1, "seed (a 63-bit number)"),
    "frames": (1, 8, "number of story frames (trained on 2 to 4)"),
}


def check_sampling_arguments(args):
    """Every option checked, each with a one-line message, before the checkpoint is loaded.

    Order matters to the user, not to the code: numbers first, then what each task needs
    (one task a command: draw, film, inpaint, extend, ask or tell), then the files read,
    then the places written. A 1.4B checkpoint takes a minute to load; a mistake found
    after that minute, or after the pictures are drawn, wastes it.
    """
    # numbers: in range and finite (NaN passes every comparison but `isfinite`)
    for name, (low, high, meaning) in LIMITS.items():
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and low <= value <= high):
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"{flag} {value}: the {meaning} must be a number in [{low:g}, {high:g}]")
    # texts: an empty one is never what was meant
    if args.question is not None and not args.question.strip():
        raise UsageError("--question is empty: ask something, e.g. --question \"what color is the circle?\"")
    if any(not prompt.strip() for prompt in args.prompt or []):
        raise UsageError("--prompt is empty: give a caption (to draw without one, that is the unconditional "
                         "prompt, which guidance uses; it is not a task of its own)")
    if args.story is not None and not args.story.strip():
        raise UsageError("--story is empty: give the first frame's sentence, e.g. --story \"a red circle at the top left\"")
    # which task: each flag belongs to one, and two tasks at once are refused, not half-done
    if args.frames is not None and args.story is None:
        raise UsageError("--frames is the length of a story: give --story TEXT too")
    if args.story is not None and (args.question is not None or args.prompt or args.prompts_file or args.mask
                                   or args.extend or args.film):
        raise UsageError("--story writes and draws a story on its own: drop --question / --prompt / --prompts-file "
                         "/ --mask / --extend / --film")
    if args.question is not None and not args.image:
        raise UsageError("--question needs --image")
    if args.question is not None and (args.prompt or args.prompts_file or args.mask or args.extend or args.film):
        raise UsageError("--question answers about --image: drop --prompt / --mask / --extend / --film")
    if (args.mask or args.extend) and not args.image:
        raise UsageError("--mask and --extend need --image")
    if args.image and not (args.mask or args.extend or args.question is not None or args.story is not None):
        raise UsageError("--image needs --mask (inpainting), --extend (extrapolation), --question or --story "
                         "(a story from that first frame)")
    if args.mask and args.extend:
        raise UsageError("give --mask or --extend, not both")
    if args.film and (args.image or args.out_dir):
        raise UsageError("--film draws one text-to-image film strip: drop --image / --mask / --extend / --out-dir")
    # what is read must exist; where we write must take a new file (probed, see check_writable_folder)
    for path in (args.image, args.mask, args.prompts_file):
        if path and not Path(path).is_file():
            raise UsageError(f"{path} not found" + (" (it is a folder)" if Path(path).is_dir() else ""))
    if args.out_dir:
        if Path(args.out_dir).exists() and not Path(args.out_dir).is_dir():
            raise UsageError(f"--out-dir {args.out_dir} is a file: give a folder")
        check_writable_folder(args.out_dir, "--out-dir", create=True)
    for flag, path in (("--out", args.out), ("--film", args.film)):
        if path:
            check_output(path, flag)


def prompts_of(args):
    """The captions to draw: every --prompt, then the non-empty lines of --prompts-file."""
    prompts = list(args.prompt or [])
    if args.prompts_file:
        try:
            lines = Path(args.prompts_file).read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise UsageError(f"--prompts-file {args.prompts_file} is not a UTF-8 text file: one caption a line")
        prompts += [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise UsageError("nothing to do: give --prompt TEXT, --prompts-file FILE, or --image with --question")
    return prompts


def sampling_command(argv=None):
    """python sampling.py: every option checked, then the one task the options ask for."""
    p = argparse.ArgumentParser(description="Generate images or answers with a Show-o checkpoint.")
    p.add_argument("--ckpt", required=True, help="single-file checkpoint (train.py or checkpoint.py convert)")
    p.add_argument("--prompt", action="append", help="caption to draw (repeatable)")
    p.add_argument("--prompts-file", help="file with one caption per line")
    p.add_argument("--out", help="output picture (with several prompts: their grid)")
    p.add_argument("--out-dir", help="output folder for several images (000.png ... and grid.png)")
    p.add_argument("--image", help="input image for inpainting, extrapolation or a question")
    p.add_argument("--mask", help="inpainting mask image: white = repaint")
    p.add_argument("--extend", choices=["left", "right", "up", "down"], help="extrapolate the image")
    p.add_argument("--question", help="ask about --image (prints the answer)")
    p.add_argument("--film", help="write a film strip PNG of MaskGIT decoding the (first) prompt, step by step")
    p.add_argument("--story", help="the first sentence of a story: the model draws its frame, then writes the next "
                                   "sentence and draws that frame, and so on (a checkpoint of train.py --preset story)")
    p.add_argument("--frames", type=int, help="frames of the --story (default 3)")
    p.add_argument("--steps", type=int, help=f"MaskGIT steps (default: the checkpoint's for the task, "
                                             f"else {DEFAULT_SETTINGS['steps']})")
    p.add_argument("--guidance", type=float, help=f"guidance scale w (default: the checkpoint's for the task, "
                                                  f"else {DEFAULT_SETTINGS['guidance']})")
    p.add_argument("--temperature", type=float, help="pictures: noise on the re-masking choice (default: the "
                   "checkpoint's, else 1); answers: sampling temperature with --sample or --top-k (default 1)")
    p.add_argument("--code-temperature", type=float, help="pictures (MaskGIT): draw codes from softmax(logits / T) "
                                                          "(default: the checkpoint's, else 1, as released)")
    p.add_argument("--top-k", type=int, help="answers, and pictures of an autoregressive checkpoint: sample "
                                             "from the k most likely tokens")
    p.add_argument("--sample", action="store_true",
                   help="answers and a story's sentences: sample (at temperature 1) instead of greedy")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--naive", action="store_true",
                   help="recompute the whole sequence at every step (the simple, slow path; same results)")
    args = p.parse_args(argv)

    def job():
        # Options, then the output's place (probed by writing there), then the model: all
        # that can be refused is refused before the checkpoint is read.
        check_sampling_arguments(args)
        prompts = prompts_of(args) if args.story is None and args.question is None else []
        out = None if args.question is not None else check_output(
            output_of(args, prompts), "--film" if args.film else "--out", create=bool(args.out_dir))
        sample(args, prompts, out, pick_device(args.device))
    exit_with_one_line(job)


def output_of(args, prompts):
    """The picture a sampling command writes: --out (or --film) when given, else a default name
    in --out-dir when given, else in the current folder. Only what was asked for is written."""
    if args.film:
        return args.film
    if args.out:
        return args.out
    if args.story is not None:
        name = "story.png"
    elif args.image:
        name = "edited.png"
    else:
        name = "sample.png" if len(prompts) == 1 and not args.out_dir else "grid.png"
    return Path(args.out_dir or ".") / name


# ----------------------------------------------------------------------------------------
# python evaluate.py, bench.py, checkpoint.py, model.py, attention.py
# ----------------------------------------------------------------------------------------

def evaluate_command(argv=None):
    """python evaluate.py scores | bpe | lfq | probe | reach | stories."""
    parser = argparse.ArgumentParser(description="Measure a checkpoint; see the two tokenizers at work.")
    sub = parser.add_subparsers(dest="command", required=True)
    bpe = sub.add_parser("bpe", help="learn a small BPE and split a text with it")
    bpe.add_argument("text", nargs="?", default="a purple triangle at the bottom left")
    lfq = sub.add_parser("lfq", help="draw pictures, their LFQ codes and their reconstructions")
    lfq.add_argument("--ckpt", required=True, help="a checkpoint from train.py (e.g. out/tiny.pt)")
    lfq.add_argument("--png", default="lfq.png")
    lfq.add_argument("--shift", type=int, default=0, choices=range(0, 16), metavar="PIXELS",
                     help="move the pictures this many pixels right first (0-15)")
    probe = sub.add_parser("probe", help="linear probes: what the codes keep of a picture, against the features")
    probe.add_argument("--ckpt", required=True, help="a checkpoint from train.py (e.g. assets/tiny.pt)")
    probe.add_argument("--pictures", type=int, default=2000, metavar="N",
                       help="pictures the probes are fitted on (20-20000; a quarter as many score them)")
    reach = sub.add_parser("reach", help="how far an LFQ code reaches: codes that change around one changed object")
    reach.add_argument("--ckpt", required=True, help="a checkpoint from train.py (e.g. assets/tiny.pt)")
    stories = sub.add_parser("stories", help="the first stories of a story checkpoint's scored set, as a picture")
    stories.add_argument("--ckpt", required=True, help="a checkpoint of train.py --preset story")
    stories.add_argument("--count", type=int, default=4, help="how many of the 90 scored stories (1-90)")
    stories.add_argument("--png", default="stories.png")
    scores = sub.add_parser("scores", help="the held-out scores of a train.py checkpoint")
    scores.add_argument("--ckpt", required=True, help="a checkpoint from train.py (e.g. out/tiny.pt)")
    args = parser.parse_args(argv)

    def job():
        if args.command == "bpe":
            evaluate.show_bpe(args.text)
        elif args.command == "lfq":
            evaluate.show_lfq(args.ckpt, check_output(args.png, "--png"), shift=args.shift)
        elif args.command == "reach":
            evaluate.show_reach(args.ckpt)
        elif args.command == "stories":
            check_number("--count", args.count, 1, 90, "number of scored stories shown")
            evaluate.show_stories(args.ckpt, check_output(args.png, "--png"), args.count)
        elif args.command == "probe":
            check_number("--pictures", args.pictures, 20, 20000, "number of pictures the probes are fitted on")
            evaluate.show_probe(args.ckpt, args.pictures)
        else:
            evaluate.print_scores(args.ckpt)
    exit_with_one_line(job)


# Counts that must be at least 1, per bench subcommand (the option names as argparse stores them).
AT_LEAST_ONE = {"inference": ("hidden", "layers", "heads", "prompts", "steps", "questions", "new_tokens",
                              "train_batch", "train_steps", "repeats"),
                "compare": ("pictures",), "loading": ()}


def check_bench_arguments(args):
    """Every number and input file checked, one line each, before anything is built or loaded."""
    for name in AT_LEAST_ONE[args.command]:
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} {getattr(args, name)}: give at least 1")
    if getattr(args, "threads", 0) < 0:
        raise UsageError(f"--threads {args.threads}: give 0 (one per core) or more")
    if args.command == "inference":
        check_number("--guidance", args.guidance, 0, 100, "guidance scale w")
        if args.hidden % args.heads or (args.hidden // args.heads) % 4:
            raise UsageError(f"--hidden {args.hidden} / --heads {args.heads}: the head size must be a whole "
                             f"multiple of 4 (rotary embedding)")
    if args.command == "compare":
        if min(args.mtp_steps) < 1:
            raise UsageError(f"--mtp-steps {args.mtp_steps}: every step count must be at least 1")
        for flag, path in (("--mtp", args.mtp), ("--ar", args.ar)):
            try:
                extra = read_checkpoint_file(path)["extra"]      # its header: both arms open before any timing
            except CheckpointError as error:
                raise UsageError(f"{flag}: {error}") from None
            objective = extra.get("image_objective", "mtp")
            if objective != flag[2:]:
                raise UsageError(f"{flag} {path} draws with image_objective {objective}: give a checkpoint of "
                                 f"train.py --image-objective {flag[2:]}")


def bench_command(argv=None):
    """python bench.py [inference | loading | compare]."""
    p = argparse.ArgumentParser(description="Benchmarks: inference paths, loading at full size, MaskGIT vs AR.")
    sub = p.add_subparsers(dest="command")
    inference = sub.add_parser("inference", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                               help="naive vs cached t2i and mmu, SDPA vs explicit attention (the default)")
    inference.add_argument("--hidden", type=int, default=384, help="CPU section: hidden size")
    inference.add_argument("--layers", type=int, default=6, help="CPU section: transformer layers")
    inference.add_argument("--heads", type=int, default=6, help="CPU section: attention heads")
    inference.add_argument("--prompts", type=int, default=1,
                           help="t2i captions per batch (guidance doubles the rows)")
    inference.add_argument("--steps", type=int, default=18, help="t2i MaskGIT steps")
    inference.add_argument("--guidance", type=float, default=DEFAULT_SETTINGS["guidance"], help="t2i guidance scale w")
    inference.add_argument("--questions", type=int, default=2, help="mmu questions per batch (ragged lengths)")
    inference.add_argument("--new-tokens", type=int, default=100, help="mmu answer tokens generated per question")
    inference.add_argument("--train-batch", type=int, default=2, help="training step: t2i sequences per batch")
    inference.add_argument("--train-steps", type=int, default=2, help="training steps timed (after one warm-up)")
    inference.add_argument("--threads", type=int, default=1,
                           help="CPU threads for torch; 1 keeps timings steady on a shared machine, "
                                "0 is torch's default (one per core)")
    inference.add_argument("--repeats", type=int, default=1, help="time each job this many times, keep the best")
    inference.add_argument("--no-cpu", action="store_true", help="skip the mid-size CPU section")
    inference.add_argument("--no-cuda", action="store_true", help="skip the full-size CUDA section")
    loading = sub.add_parser("loading", help="random weights of the released sizes: convert, load, use "
                                             "(minutes, about 12 GB of memory and 10 GB of disk)")
    loading.add_argument("--dir", help="where to write the released layout (default: out/released-random, "
                                       "with --clip out/released-random-clip)")
    loading.add_argument("--clip", action="store_true",
                         help="the CLIP-ViT variant (show-o-w-clip-vit + CLIP-L/14-336) instead")
    compare = sub.add_parser("compare", help="MaskGIT against raster-order drawing: speed and scores")
    compare.add_argument("--mtp", required=True, help="a train.py checkpoint (image_objective mtp)")
    compare.add_argument("--ar", required=True, help="the same recipe with --image-objective ar")
    compare.add_argument("--pictures", type=int, default=100, help="pictures drawn for the timing")
    compare.add_argument("--mtp-steps", type=int, nargs="+", default=[4, 8, 12, 24])
    compare.add_argument("--mtp-set", action="append", default=[], metavar="NAME=VALUE",
                         help="mtp arm's sampling override (repeatable): guidance=W, temperature=T, code_temperature=T")
    compare.add_argument("--ar-set", action="append", default=[], metavar="NAME=VALUE",
                         help="sampling override for the ar arm: guidance=W, temperature=T or top_k=K (repeatable)")
    compare.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv or ["inference"])

    def job():
        check_bench_arguments(args)
        {"loading": bench.bench_loading, "compare": bench.bench_compare, "inference": bench.bench_inference}[
            args.command](args)
    exit_with_one_line(job)


def checkpoint_command(argv=None):
    """python checkpoint.py convert --showo DIR --magvit DIR --tokenizer DIR [--clip DIR] --out FILE."""
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

    def job():
        check_writable_file(args.out, "--out")            # before minutes of reading, not after
        convert(args.showo, args.magvit, args.tokenizer, args.out, args.dtype, args.clip)
    exit_with_one_line(job)


def model_command(argv=None):
    """python model.py: where the released model's 1.45 billion parameters are."""
    parser = argparse.ArgumentParser(description="Where the parameters of a released Show-o are.")
    parser.add_argument("--preset", choices=["showo-256", "showo-512"], default="showo-256",
                        help="the 256 px or the 512 px release")
    print(parameter_report(ShowoConfig.preset(parser.parse_args(argv).preset)))


def attention_command(argv=None):
    """python attention.py [--png DIR]: the example masks as text, or drawn as pictures."""
    parser = argparse.ArgumentParser(description="Show the omni-attention masks.")
    parser.add_argument("--png", metavar="DIR",
                        help="write t2i_mask.png, mmu_mask.png, lm_mask.png and story_mask.png here")
    args = parser.parse_args(argv)

    def job():
        folder = None if args.png is None else Path(args.png)
        if folder is not None:
            if not args.png.strip():            # Path("") would be the current folder
                raise UsageError("--png is empty: give a folder for the pictures, e.g. --png masks")
            if folder.exists() and not folder.is_dir():
                raise UsageError(f"--png {folder} is a file: give a folder for the pictures")
            check_writable_folder(folder, "--png", create=True)
        for name, title, ids, allowed in mask_examples():
            tokens = [MASK_NAMES[t] for t in ids[0].tolist()]
            if folder:
                folder.mkdir(parents=True, exist_ok=True)
                save_picture(mask_picture(allowed[0], tokens), folder / f"{name}_mask.png")
            else:
                print(f"\n{title}\n")
                print(show_mask(allowed[0], tokens))
        if folder:
            print(f"wrote t2i_mask.png, mmu_mask.png, lm_mask.png and story_mask.png to {folder}")
    exit_with_one_line(job)

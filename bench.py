"""Benchmarks: the fast inference paths, loading the released sizes, MaskGIT against AR.

`python bench.py` (or `bench.py inference`): how much the fast inference paths save.
Show-o (arXiv 2408.12528v7, §3.2 "Inference Stage") decodes images by MaskGIT steps and answers token by token. The
simple way recomputes the whole sequence at every step; sampling.py's fast paths reuse
what omni-attention says cannot change (CachedPromptT2I: the prompt's keys/values;
CachedNextToken: the keys/values of every token already seen). This script measures, in
one run:

* t2i: one image generation (256 image tokens, 129 text slots, 18 steps, guidance on),
  FullRecomputeT2I vs CachedPromptT2I; tokens/s = image tokens produced per second;
* mmu: 100 new answer tokens for a ragged batch of questions (EOS stop switched off, so
  exactly 100 are generated), the whole sequence recomputed per token
  (`next_token_function(naive=True)`) vs the KV cache (CachedNextToken); tokens/s = answer
  tokens per second;
* train: one forward+backward MTP step on a t2i batch (no optimiser), the fused SDPA
  kernel vs the written-out attention (`model.use_explicit_attention`); tokens/s =
  sequence tokens per second.

Sections: a mid-size model on the CPU in float32 (random weights, the real 58498-id
vocabulary), and, when CUDA is present, the full-size 'showo-256' preset in bfloat16.
"same" says whether the fast path returned exactly the naive path's tokens (train: the
same loss within 1e-3); in bfloat16 different kernels round differently, so a few tokens
may differ there.

Every measurement runs in a fresh process (spawned, not forked: a forked child of a
process that has used torch's OpenMP threads can deadlock) that builds the same seeded
model, runs a small warm-up, then the timed work. Memory is that process's peak:
CPU: resource.getrusage(RUSAGE_SELF).ru_maxrss, the peak resident set size, which also
counts Python, torch and the weights, so "work" subtracts the peak reached after building
the model; CUDA: torch.cuda.max_memory_allocated, "work" subtracting the weights. Timings
on a shared machine are noisy; use --repeats to keep the best of several. The CPU section
uses one thread by default: when another job keeps the cores busy, torch's OpenMP threads
wait on each other at every operation, which slowed this bench 3-5x on a busy 2-core
machine and hit the small operations of the cached paths hardest (--threads 0: torch's
default, one thread per core, for a machine of your own).

    python bench.py                            # the inference bench (a few minutes on a 2-core CPU)
    python bench.py inference --no-cpu         # only the full-size CUDA section

`python bench.py loading`: writes random weights of the released sizes in the released
layout (checkpoint.write_released_layout), then converts, loads, draws one picture and
answers one question, each in a fresh process, with its time and peak memory.
`python bench.py loading --clip` does the same for the CLIP-ViT variant (its Show-o with
mm_projector, and a CLIP-L/14-336 download whose tower answers the question).

`python bench.py compare --mtp A.pt --ar B.pt`: forward passes, time for 100 pictures and
scores of a Show-o (MaskGIT) checkpoint against the same recipe trained autoregressively.

Read first: checkpoint.py. Read next: COURSE.md (the lessons) and docs/paper_map.md.
"""

import signal
import sys

if __name__ == "__main__":    # Ctrl-C while the imports below load (seconds): one line, not a traceback
    signal.signal(signal.SIGINT, lambda *_: sys.exit("\ninterrupted while starting: nothing was done"))

import json
import multiprocessing
import random
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

import data
import evaluate
from attention import mmu_sequences, t2i_attention_mask, t2i_image_positions, t2i_sequences
from bpe import TextTokenizer
from checkpoint import (CLIP_KEY_TABLE, config_from_released, convert, load_checkpoint, load_vision_tower,
                        recommended_settings, released_key_names, rename_keys)
from commands import phrase_question
from model import IGNORE, Showo, ShowoConfig, mtp_loss
from readers import ClipConfig, ClipVisionTower, answer_with_clip
from sampling import (answer_questions, decode_tokens, generate_image_codes, generate_pictures, left_pad,
                      next_token_function, understanding_mask_of)
from tensor_files import write_safetensors
from tokenizer import ImageTokenizer, ImageTokenizerConfig


@dataclass
class Section:
    """One model to measure: where it runs and its configuration (picklable for the child)."""
    title: str
    device: str
    dtype: str
    config: dict
    threads: int


def build_model(section):
    """The section's model with seeded random weights, identical in every process."""
    if section.threads:
        torch.set_num_threads(section.threads)
    torch.manual_seed(0)
    with torch.device(section.device):
        model = Showo(ShowoConfig(**section.config))
    return model.to(getattr(torch, section.dtype)).eval()


def random_captions(cfg, count, generator):
    """`count` captions of different lengths (12, 20, 28, ... tokens) of random text ids.

    Speed depends on shapes, not on what the ids mean, so random ids (and random weights)
    measure the real cost; different lengths exercise the padding the caches must handle."""
    return [torch.randint(cfg.llm_vocab_size, (12 + 8 * i,), generator=generator).tolist()
            for i in range(count)]


# ----------------------------------------------------------------------------------------
# The measured jobs: each returns (output to compare, tokens processed)
# ----------------------------------------------------------------------------------------

def t2i_job(model, args, naive, small):
    """One text-to-image generation; `small` is the one-step warm-up."""
    generator = torch.Generator(model.embed.weight.device).manual_seed(1)
    captions = random_captions(model.cfg, args.prompts, torch.Generator().manual_seed(2))
    codes = generate_image_codes(model, captions, 1 if small else args.steps, args.guidance,
                                 generator=generator, naive=naive)
    return codes.tolist(), codes.numel()


def mmu_job(model, args, naive, small):
    """Exactly `new_tokens` greedy answer tokens for ragged questions about random images."""
    cfg, device = model.cfg, model.embed.weight.device
    gen = torch.Generator().manual_seed(3)
    questions = random_captions(cfg, args.questions, gen)
    images = torch.randint(cfg.codebook_size, (args.questions, cfg.num_vq_tokens), generator=gen)
    padded, lengths = mmu_sequences(images + cfg.image_offset, questions, cfg)
    ids = left_pad([row[:n] for row, n in zip(padded.tolist(), lengths)], cfg.pad_id).to(device)
    count = 2 if small else args.new_tokens
    next_logits = next_token_function(model, understanding_mask_of(cfg), naive)
    new = decode_tokens(lambda ids: next_logits(ids)[:, :cfg.llm_vocab_size], ids, count)   # text ids only, no EOS stop
    return new.tolist(), new.numel()


def train_job(model, args, explicit, small):
    """Forward+backward MTP steps on a t2i batch with every image token masked by chance."""
    cfg, device = model.cfg, model.embed.weight.device
    gen = torch.Generator().manual_seed(4)
    images = torch.randint(cfg.codebook_size, (args.train_batch, cfg.num_vq_tokens), generator=gen)
    hidden = torch.rand(images.shape, generator=gen) < 0.5
    tokens = torch.where(hidden, cfg.mask_token_id, images + cfg.image_offset)
    ids = t2i_sequences(random_captions(cfg, args.train_batch, gen), tokens, cfg).to(device)
    allowed = t2i_attention_mask(ids, cfg.pad_id, cfg.soi_id, cfg.eoi_id)
    labels = torch.full(ids.shape, IGNORE)
    labels[:, t2i_image_positions(cfg)] = torch.where(hidden, images + cfg.image_offset, IGNORE)
    model.train()
    model.use_explicit_attention(explicit)
    for _ in range(1 if small else args.train_steps):
        model.zero_grad(set_to_none=True)
        loss = mtp_loss(model(ids, allowed), labels.to(device))
        loss.backward()
    return loss.item(), ids.numel() * (1 if small else args.train_steps)


JOBS = {"t2i": t2i_job, "mmu": mmu_job, "train": train_job}


# ----------------------------------------------------------------------------------------
# Measuring one job in a fresh process
# ----------------------------------------------------------------------------------------

def peak_rss_mb():
    """This process's peak resident set size in MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** 20 if sys.platform == "darwin" else peak / 2 ** 10


def measure(section, job, variant, args):
    """In a fresh process: build, warm up, time the job. -> (seconds, output, tokens, peak, work)."""
    model = build_model(section)
    cuda = section.device == "cuda"
    # "work" memory is what the job adds on top of the built model.
    after_build = torch.cuda.memory_allocated() / 2 ** 20 if cuda else peak_rss_mb()
    # A small warm-up first: the first call pays one-off costs (kernel selection, CUDA
    # context, allocator growth) that are not the path being compared.
    JOBS[job](model, args, variant, small=True)
    best = None
    for _ in range(args.repeats):
        if cuda:
            torch.cuda.synchronize()          # CUDA runs asynchronously: time only finished work
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        output, tokens = JOBS[job](model, args, variant, small=False)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        # The best of several runs: on a shared machine other jobs only ever add time.
        best = seconds if best is None else min(best, seconds)
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else peak_rss_mb()
    return best, output, tokens, peak, peak - after_build


def run_isolated(section, job, variant, args):
    """`measure` in a newly spawned process, so that its peak memory is its own."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(measure, section, job, variant, args).result()


# ----------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------

def same(naive_output, fast_output, job):
    """'yes', or how much differs (tokens) / by how much (training loss)."""
    if job == "train":
        gap = abs(naive_output - fast_output)
        return "yes" if gap < 1e-3 else f"loss off by {gap:.1e}"
    naive_tokens = torch.tensor(naive_output)
    fast_tokens = torch.tensor(fast_output)
    differ = (naive_tokens != fast_tokens).sum().item()
    return "yes" if differ == 0 else f"no ({differ}/{naive_tokens.numel()} differ)"


def bench_section(section, args):
    """Time the three pairs for one section; print its rows; return {job: speed-up}."""
    tasks = [("t2i", f"t2i {args.prompts}x256 img tok, {args.steps} steps, w={args.guidance}",
              (True, "naive"), (False, "cached")),
             ("mmu", f"mmu {args.questions} ragged q, {args.new_tokens} new tok",
              (True, "naive"), (False, "cached")),
             ("train", f"train fwd+bwd, batch {args.train_batch}",
              (True, "explicit"), (False, "sdpa"))]
    memory = "peak alloc" if section.device == "cuda" else "peak RSS"
    print(f"\n{section.title}")
    print(f"{'task':<38} {'path':<9} {'s/run':>8} {'tok/s':>9} {'speed-up':>9} "
          f"{memory + ' MiB':>15} {'work MiB':>9}  same")
    speedups = {}
    for job, label, (slow_variant, slow_name), (fast_variant, fast_name) in tasks:
        slow = run_isolated(section, job, slow_variant, args)
        fast = run_isolated(section, job, fast_variant, args)
        runs = args.train_steps if job == "train" else 1
        speedups[job] = slow[0] / fast[0]
        for name, (seconds, _, tokens, peak, work), ratio, match in [
                (slow_name, slow, "1.00x", ""),
                (fast_name, fast, f"{speedups[job]:.2f}x", same(slow[1], fast[1], job))]:
            print(f"{label:<38} {name:<9} {seconds / runs:>8.3f} {tokens / seconds:>9.1f} {ratio:>9} "
                  f"{peak:>15.0f} {work:>9.0f}  {match}")
    return speedups


# ----------------------------------------------------------------------------------------
# loading: the released sizes, written, converted, loaded and used (no download needed)
# ----------------------------------------------------------------------------------------

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


def write_released_layout(directory, seed=0, clip=False):
    """Random weights of the released sizes, written as the released downloads are laid out.

    directory/showo: config.json + pytorch_model.bin (our model's weights renamed through
    SHOWO_KEY_TABLE read right to left); directory/magvit: config.json +
    model.safetensors; directory/phi: config.json + a small BPE learned on the shapes
    world in GPT-2's file format (speed does not depend on which words the ids spell) +
    Phi-1.5's 38 whitespace tokens in added_tokens.json. A full-size test of loading that
    needs no download (bench.py loading); about 6.2 GB on disk.
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
    text_tokenizer = TextTokenizer.train(data.text_corpus(2000, seed=0), 512)
    text_tokenizer.save(directory / "phi")
    whitespace = {" " * n: 50257 + 31 - n for n in range(31, 1, -1)}
    whitespace.update({"\t" * n: 50287 + 9 - n for n in range(9, 1, -1)})
    (directory / "phi" / "added_tokens.json").write_text(json.dumps({**text_tokenizer.added_tokens, **whitespace}))


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


PICTURE_STEPS = 2   # a full 18-step picture at 1.4B parameters takes minutes on a CPU


def loading_job(step, directory, clip=False):
    """One step of the loading benchmark, in its own process: -> (seconds, result).

    clip: the CLIP-ViT variant's layout (directory/clip too): its tower is converted and
    loaded with the rest, and answers the question."""
    directory = Path(directory)
    start = time.perf_counter()
    if step == "convert":
        convert(directory / "showo", directory / "magvit", directory / "phi", directory / "showo.pt", "bf16",
                directory / "clip" if clip else None)
        result = f"{(directory / 'showo.pt').stat().st_size / 1e9:.2f} GB written"
    elif step.startswith("load"):
        dtype = torch.bfloat16 if step == "load bf16" else torch.float32
        networks = load_checkpoint(directory / "showo.pt", "cpu", dtype)[:2]
        if clip:
            networks += (load_vision_tower(directory / "showo.pt", "cpu", dtype),)
        tensors = [t for network in networks for t in network.state_dict().values()]
        result = f"{sum(t.numel() * t.element_size() for t in tensors) / 1e9:.2f} GB of weights"
    else:
        model, vq, text_tokenizer, extra = load_checkpoint(directory / "showo.pt", "cpu")
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(0)
        if step == "picture":
            # Two steps time the per-step cost (each step is one guided forward pass of the
            # same size), so the whole picture's time is steps x that.
            settings = {**recommended_settings(extra, "t2i"), "steps": PICTURE_STEPS}
            codes = generate_pictures(model, [text_tokenizer.encode("a photo of a red fox in the snow")], "mtp",
                                      settings, generator)
            result = (f"{tuple(vq.decode(codes).shape)} pixels after {PICTURE_STEPS} of "
                      f"{recommended_settings(extra, 't2i')['steps']} MaskGIT steps")
        else:
            question = phrase_question(text_tokenizer, model.cfg, extra["question_template"], "what is in the picture?")
            if clip:
                tower = load_vision_tower(directory / "showo.pt", "cpu")
                start = time.perf_counter()
                pixels = torch.zeros(1, 3, tower.cfg.image_size, tower.cfg.image_size)
                answer = answer_with_clip(model, tower, pixels, text_tokenizer.encode(extra["system_prompt"]),
                                          [question], max_new_tokens=20)[0]
            else:
                picture = torch.zeros(1, 3, vq.cfg.resolution, vq.cfg.resolution)
                answer = answer_questions(model, vq.encode(picture), [question], max_new_tokens=20)[0]
            result = f"{len(answer)} answer tokens"
    return time.perf_counter() - start, result, peak_rss_mb()


def bench_loading(args):
    """Write the released layout at full size, then time convert, load, a picture and an answer."""
    directory = Path(args.dir or ("out/released-random-clip" if args.clip else "out/released-random"))
    if not (directory / "showo" / "pytorch_model.bin").exists():
        print(f"writing random weights of the released sizes to {directory} "
              f"(about {7.4 if args.clip else 6.2} GB) ...", flush=True)
        # In a process of its own too: on Linux a child inherits its parent's peak RSS
        # (ru_maxrss survives fork and exec), so a parent that held the random weights would
        # inflate every step's peak below.
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            pool.submit(write_released_layout, directory, 0, args.clip).result()
    files = [directory / "showo" / "pytorch_model.bin", directory / "magvit" / "model.safetensors"]
    read = sum(f.stat().st_size for f in files + ([directory / "clip" / "model.safetensors"] if args.clip else []))
    print(f"released weights on disk: {read / 1e9:.2f} GB (float32)\n")
    print(f"{'step':<28} {'seconds':>8} {'peak RSS GiB':>12}  result")
    for step in ["convert", "load bf16", "load fp32", "picture", "answer"]:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            seconds, result, peak = pool.submit(loading_job, step, directory, args.clip).result()
        if step == "convert":
            result += f"; peak = {peak * 2 ** 20 / read:.2f}x the weights read (target <= 1.5x)"
        elif step.startswith("load"):
            loaded = float(result.split()[0]) * 1e9
            result += f"; peak = {peak * 2 ** 20 / loaded:.2f}x them (target <= 1.3x)"
        print(f"{step:<28} {seconds:>8.1f} {peak / 1024:>12.2f}  {result}", flush=True)


# ----------------------------------------------------------------------------------------
# compare: MaskGIT (Show-o) against autoregressive drawing (docs/experiments.md, "Why discrete diffusion?")
# ----------------------------------------------------------------------------------------

def time_pictures(model, objective, settings, count, batch=50):
    """Seconds to draw `count` pictures of random shapes-world prompts, `batch` at a time."""
    rng = random.Random(0)
    prompts = [data.caption(data.random_scene(rng)) for _ in range(count)]
    tokenizer_ids = [list(range(3, 3 + len(p.split()))) for p in prompts]     # lengths like real captions
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for i in range(0, count, batch):
        generate_pictures(model, tokenizer_ids[i:i + batch], objective, settings, generator)
    return time.perf_counter() - start


SETTING_TYPES = {"guidance": float, "temperature": float, "top_k": int, "code_temperature": float}


def parse_settings(assignments, flag):
    """--mtp-set / --ar-set NAME=VALUE pairs -> {name: value} for the sampling settings."""
    settings = {}
    for assignment in assignments:
        name, _, text = assignment.partition("=")
        if name not in SETTING_TYPES:
            raise ValueError(f"{flag} {assignment}: NAME is one of {', '.join(SETTING_TYPES)} "
                             f"(the steps are --mtp-steps)")
        try:
            settings[name] = SETTING_TYPES[name](text)
        except ValueError:
            raise ValueError(f"{flag} {assignment}: expected a {SETTING_TYPES[name].__name__}") from None
    return settings


def bench_compare(args):
    """Forward passes, wall time and scores of an mtp and an ar checkpoint of the same recipe.

    The two arms differ in the image mask, the image loss and the decoding loop only
    (Show-o §1 argues MaskGIT needs ~20x fewer steps than raster order). Passes per picture
    are the step counts; seconds are measured with guidance on, as in real use (it doubles
    the rows). The scores use evaluate.py's prompts and seed, so at the stored settings
    they equal the scores train.py printed.
    """
    torch.set_num_threads(args.threads or torch.get_num_threads())
    print(f"{'arm':<34} {'passes/picture':>14} {f's/{args.pictures} pictures':>18}  scores")
    arms = ((args.mtp, parse_settings(args.mtp_set, "--mtp-set")), (args.ar, parse_settings(args.ar_set, "--ar-set")))
    for path, changes in arms:
        model, vq, text_tokenizer, extra = load_checkpoint(path)
        scoring = evaluate.scoring_of_checkpoint(extra)
        scoring.settings = {**scoring.settings, **changes}
        print(f"{path}: " + ", ".join(f"{name} {value}" for name, value in scoring.settings.items()))
        prompts = evaluate.evaluation_prompts(scoring)
        # MaskGIT's step count is free (the trade-off curve); raster order needs one pass per token.
        step_counts = args.mtp_steps if scoring.objective == "mtp" else [model.cfg.num_vq_tokens]
        for steps in step_counts:
            arm = replace(scoring, settings={**scoring.settings, "steps": steps})
            seconds = time_pictures(model, arm.objective, arm.settings, args.pictures)
            one, two = (evaluate.t2i_match_rate(model, vq, text_tokenizer, prompts[name], arm)
                        for name in ("t2i_one", "t2i_two"))
            name = f"{arm.objective} {'MaskGIT' if arm.objective == 'mtp' else 'raster order'}, {steps} steps"
            print(f"{name:<34} {steps:>14} {seconds:>18.1f}  one object {one:.0%}, two objects {two:.0%}", flush=True)
    # One level up: time depends on shapes, not on what the weights learned, so an untrained
    # model with a 16x16 grid shows how the gap grows with the number of image tokens.
    print("\none level up: 16x16 = 256 image tokens, the same transformer, random weights (speed only)")
    model, _, _, extra = load_checkpoint(args.mtp)
    big = Showo(replace(model.cfg, num_vq_tokens=256)).eval()
    for objective, steps in (("mtp", 12), ("ar", 256)):
        settings = {"steps": steps, "guidance": 1.5, "temperature": 1.0, "top_k": None, "code_temperature": 1.0}
        seconds = time_pictures(big, objective, settings, args.pictures)
        print(f"{objective + ', ' + str(steps) + ' steps':<34} {steps:>14} {seconds:>18.1f}", flush=True)


def bench_inference(args):
    """The naive-vs-cached table: a mid-size model on the CPU, the full size on CUDA."""
    if not args.no_cpu:
        mid = dict(hidden_size=args.hidden, num_layers=args.layers, num_heads=args.heads,
                   intermediate_size=4 * args.hidden)
        title = (f"CPU, float32, mid-size: hidden {args.hidden}, {args.layers} layers, {args.heads} heads, "
                 f"{args.threads or torch.get_num_threads()} threads")
        speedups = bench_section(Section(title, "cpu", "float32", mid, args.threads), args)
        print(f"targets: t2i cached >= 1.4x naive: {speedups['t2i']:.2f}x "
              f"{'ok' if speedups['t2i'] >= 1.4 else 'MISSED'}; "
              f"mmu cached >= 5x naive: {speedups['mmu']:.2f}x {'ok' if speedups['mmu'] >= 5 else 'MISSED'}")
    if args.no_cuda or not torch.cuda.is_available():
        print("\nCUDA section skipped" + ("" if args.no_cuda else ": no CUDA device"))
        return
    full = asdict(ShowoConfig.preset("showo-256"))
    bench_section(Section(f"CUDA ({torch.cuda.get_device_name()}), bfloat16, full size: showo-256",
                          "cuda", "bfloat16", full, args.threads), args)


def main(argv=None):
    """`python bench.py [inference|loading|compare]`: parsed, checked and run by cli.py (errors as one line)."""
    from cli import bench_command
    bench_command(argv)


if __name__ == "__main__":
    main()

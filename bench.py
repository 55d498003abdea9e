"""How much the fast inference paths save: naive vs cached, timed side by side.

Show-o §3.4 (inference) decodes images by MaskGIT steps and answers token by token. The
simple way recomputes the whole sequence at every step; sampling.py's fast paths reuse
what omni-attention says cannot change (CachedPromptT2I: the prompt's keys/values;
CachedNextToken: the keys/values of every token already seen). This script measures, in
one run:

* t2i: one image generation (256 image tokens, 129 text slots, 18 steps, guidance on),
  FullRecomputeT2I vs CachedPromptT2I; tokens/s = image tokens produced per second;
* mmu: 100 new answer tokens for a ragged batch of questions (EOS stop switched off, so
  exactly 100 are generated), Showo.generate_text vs the KV cache; tokens/s = answer
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

    python bench.py                 # the full bench (a few minutes on a 2-core CPU)
    python bench.py --no-cpu        # only the full-size CUDA section

Read first: sampling.py (the two paths) and model.py (`forward_with_cache`).
Read next: README.md ("Fast inference").
"""

import argparse
import multiprocessing
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass

import torch

from attention import t2i_attention_mask
from model import Showo, ShowoConfig, mtp_loss
from sampling import DEFAULT_GUIDANCE, generate_image_codes, generate_text_cached, left_pad
from tokenizer import mmu_sequences, t2i_sequences


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
    """`count` captions of different lengths (12, 20, 28, ... tokens) of random text ids."""
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
    if naive:
        new = model.generate_text(ids, count, stop_at_eos=False, text_only=True)
    else:
        new = generate_text_cached(model, ids, count, stop_at_eos=False, text_only=True)
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
    labels = torch.full(ids.shape, -100)
    labels[:, -(cfg.num_vq_tokens + 1):-1] = torch.where(hidden, images + cfg.image_offset, -100)
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
    after_build = torch.cuda.memory_allocated() / 2 ** 20 if cuda else peak_rss_mb()
    JOBS[job](model, args, variant, small=True)
    best = None
    for _ in range(args.repeats):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        output, tokens = JOBS[job](model, args, variant, small=False)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
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


def main(argv=None):
    p = argparse.ArgumentParser(
        description="Time naive vs cached Show-o inference (t2i and mmu) and SDPA vs explicit "
                    "attention for a training step; print tokens/s, speed-ups and peak memory.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--hidden", type=int, default=384, help="CPU section: hidden size")
    p.add_argument("--layers", type=int, default=6, help="CPU section: transformer layers")
    p.add_argument("--heads", type=int, default=6, help="CPU section: attention heads")
    p.add_argument("--prompts", type=int, default=1,
                   help="t2i captions per batch (guidance doubles the rows)")
    p.add_argument("--steps", type=int, default=18, help="t2i MaskGIT steps")
    p.add_argument("--guidance", type=float, default=DEFAULT_GUIDANCE, help="t2i guidance scale w")
    p.add_argument("--questions", type=int, default=2, help="mmu questions per batch (ragged lengths)")
    p.add_argument("--new-tokens", type=int, default=100, help="mmu answer tokens generated per question")
    p.add_argument("--train-batch", type=int, default=2, help="training step: t2i sequences per batch")
    p.add_argument("--train-steps", type=int, default=2, help="training steps timed (after one warm-up)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads for torch; 1 keeps timings steady on a shared machine, "
                        "0 is torch's default (one per core)")
    p.add_argument("--repeats", type=int, default=1, help="time each job this many times, keep the best")
    p.add_argument("--no-cpu", action="store_true", help="skip the mid-size CPU section")
    p.add_argument("--no-cuda", action="store_true", help="skip the full-size CUDA section")
    args = p.parse_args(argv)

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


if __name__ == "__main__":
    main()

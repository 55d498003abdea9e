"""Mutation check: would the test suite notice a plausible one-line mistake?

A test suite is only as good as the wrong programs it rejects. Each entry of MUTATIONS
below is one small, believable slip in a core function (a flipped sign, a shifted index,
a wrong mask, an inverted condition, an off-by-one). For each, this script copies the
repository to a temporary folder, makes that one change, runs the test suite there
(stopping at the first failure) and reports whether some test failed ("killed") or the
whole suite still passed ("SURVIVED": a hole in the tests).

    python tests/mutate.py            # every mutation (several minutes)
    python tests/mutate.py 3 7        # only mutations 3 and 7

It is not collected by pytest (its name does not start with test_). Keep it at zero
survivors: when you change a core function, add its likely mistakes here.
"""

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (file, exact text, replacement, what the mistake is)
MUTATIONS = [
    ("attention.py", "dtype=torch.bool, device=device).tril()", "dtype=torch.bool, device=device).triu()",
     "causal mask looks forwards instead of backwards"),
    ("attention.py", "real_rows = allowed & ~is_pad[:, None, :]", "real_rows = allowed",
     "real tokens may attend to [PAD]"),
    ("attention.py", "return (opened > closed) | on_boundary", "return opened > closed",
     "<|soi|> / <|eoi|> left out of the bidirectional image span"),
    ('attention.py', 'return omni_attention_mask(picture_blocks(input_ids, soi_id, eoi_id), input_ids == pad_id)',
     'return omni_attention_mask(torch.zeros_like(input_ids), input_ids == pad_id)',
     't2i image span causal instead of bidirectional'),
    ('attention.py', 'return omni_attention_mask(before_first(input_ids, eoi_id).long(), input_ids == pad_id)',
     'return omni_attention_mask(torch.zeros_like(input_ids), input_ids == pad_id)',
     'understanding prefix causal instead of bidirectional'),
    ('attention.py', 'return hide_padding(in_prefix[:, None, :] | (same_segment & causal), is_pad)',
     'return hide_padding(in_prefix[:, None, :] | causal, is_pad)',
     'packed answers see each other'),
    ("model.py", "angles = torch.cat([angles, angles], dim=-1)", "angles = angles.repeat_interleave(2, dim=-1)",
     "rotary frequencies in the interleaved layout instead of rotate-half"),
    ("model.py", "rotated_half = torch.cat([-second, first], dim=-1)", "rotated_half = torch.cat([second, -first], dim=-1)",
     "rotary rotation in the wrong direction"),
    ("model.py", "k = self.k_norm(self.split_heads(self.k(x)))", "k = self.split_heads(self.k(x))",
     "QK-Norm forgotten on the keys"),
    ("model.py", "return x + self.dropout(attended) + self.dropout(self.mlp(h)), keys_values",
     "return x + self.dropout(attended) + self.dropout(self.mlp(x)), keys_values",
     "MLP branch reads the un-normalised input"),
    ("model.py", 'approximate="tanh"', 'approximate="none"', "exact GELU instead of Phi's tanh GELU"),
    ('model.py', 'return loss_at_targets(logits, next_token_targets(labels))',
     'return loss_at_targets(logits, labels)',
     'next-token loss without the shift'),
    ('sampling.py', 'next_id = next_id.masked_fill(done, fill_id)',
     'next_id = next_id',
     'a finished row keeps talking after its EOS'),
    ('sampling.py', '        if done.all():',
     '        if done.any():',
     'answers stop when the FIRST row is done'),
    ('sampling.py', '        if eos_id is not None:',
     '        if False:',
     'the decoding loop never stops at EOS'),
    ("sampling.py", "remask = confidence < cut_off", "remask = confidence > cut_off",
     "MaskGIT re-masks the most confident tokens"),
    ("sampling.py", "    r = (step + 1) / steps\n", "    r = step / steps\n", "MaskGIT schedule one step behind"),
    ("sampling.py", "return (1 + w) * cond_logits - w * uncond_logits",
     "return (1 + w) * cond_logits + w * uncond_logits", "guidance adds the unconditional logits"),
    ("sampling.py", "return torch.cos(torch.as_tensor(r, dtype=torch.float32) * math.pi / 2)",
     "return torch.sin(torch.as_tensor(r, dtype=torch.float32) * math.pi / 2)", "mask schedule upside down"),
    ("sampling.py", "shifted[:, :, :grid - half] = grid_codes[:, :, half:]",
     "shifted[:, :, half:] = grid_codes[:, :, :grid - half]", "extending right keeps the wrong half"),
    ("sampling.py", "logits = self.model.logits(hidden[:, 1:-1], slice(off, off + self.cfg.codebook_size))",
     "logits = self.model.logits(hidden[:, :-2], slice(off, off + self.cfg.codebook_size))",
     "cached t2i reads the image logits one position early"),
    ("sampling.py", "positions = torch.arange(seen, total, device=ids.device).expand(ids.shape[0], -1)",
     "positions = torch.arange(0, total - seen, device=ids.device).expand(ids.shape[0], -1)",
     "KV-cached answer tokens restart their positions at 0"),
    ("tokenizer.py", "powers = 2 ** torch.arange(bits - 1, -1, -1)", "powers = 2 ** torch.arange(bits)",
     "LFQ code ids read with channel 0 as the LEAST significant bit"),
    ("tokenizer.py", "return self.conv(F.pad(x, (0, 1, 0, 1)))", "return self.conv(F.pad(x, (1, 0, 1, 0)))",
     "downsampling pads the top/left instead of the bottom/right"),
    ("attention.py", "return [cfg.pad_id] * (slots - len(ids)) + ids", "return ids + [cfg.pad_id] * (slots - len(ids))",
     "caption padded on the right instead of the left"),
    ("bpe.py", "best = min(pairs, key=lambda pair: ranks.get(pair, math.inf))",
     "best = max(pairs, key=lambda pair: ranks.get(pair, -1))", "BPE applies the latest merge first"),
    ("bpe.py", "            i += 2\n", "            i += 1\n", "a merge leaves its right half behind"),
    ("tokenizer.py", "commit = ((q.detach() - z) ** 2).mean() + self.cfg.beta * ((q_st - z.detach()) ** 2).mean()",
     "commit = ((q.detach() - z) ** 2).mean() + self.cfg.beta * ((q - z.detach()) ** 2).mean()",
     "commitment's second term without the straight-through path"),
    ("train.py", "([IGNORE] * len(q) if tc.mmu_answer_only else q) + a", "q + a",
     "answer-only loss still trains on the question"),
    ("sampling.py", "confidence = torch.where(unknown, chosen_prob.log(),",
     "confidence = torch.where(unknown, torch.rand_like(chosen_prob).log(),",
     "MaskGIT re-masks random tokens instead of the least confident"),
    ("bpe.py", "            result.append(merged)\n            i += 2\n",
     "            return result + [merged] + sequence[i + 2:]\n",
     "merge_pair merges only the first occurrence"),
    ("train.py", "return Part(ids, labels, lm_attention_mask(ids, cfg.pad_id))",
     "return Part(ids, labels, t2i_attention_mask(ids, cfg.pad_id, cfg.soi_id, cfg.eoi_id))",
     "AR t2i rows keep a bidirectional picture (each token sees the one it must predict)"),
    ("train.py", 'if kind == "t2i" and objective == "mtp":', 'if kind == "t2i":',
     "AR t2i targets not shifted (each position predicts itself)"),
    ("train.py", "captions = [[] if rng.random() < self.tc.caption_dropout else",
     "captions = [[] if rng.random() > self.tc.caption_dropout else", "caption drop-out inverted (90% dropped)"),
    ('train.py', 'labels[:, t2i_image_positions(cfg)] = tokens.masked_fill(~masked, IGNORE)',
     'labels[:, t2i_image_positions(cfg)] = tokens.masked_fill(masked, IGNORE)',
     'MTP loss on the visible tokens'),
    ("train.py", 'if kind == "t2i" and objective == "mtp":', 'if kind == "lm" and objective == "mtp":',
     "the t2i targets shifted like text"),
    ("train.py", "return peak * (step + 1) / warmup", "return peak * step / warmup",
     "warm-up starts at a learning rate of 0"),
    ("distributed.py", 'rng = random.Random(f"{seed}/{rank}/{stage}/{step}")', 'rng = random.Random(f"{seed}/{rank}/{stage}")',
     "every step draws the same batch"),
    # ---- the exercises of COURSE.md: the mistakes a student writes (exercises/) -------------
    # lesson 1, merge_pair (also above: "a merge leaves its right half behind", first occurrence only)
    ("bpe.py", "if i + 1 < len(sequence) and sequence[i] == pair[0]", "if sequence[i] == pair[0]",
     "merge_pair reads past the end when the sequence ends with the pair's first item"),
    # lesson 2, LookupFreeQuantizer (also above: bit order, commitment without straight-through)
    ("tokenizer.py", "        return per_token - batch\n", "        return batch - per_token\n",
     "LFQ entropy loss with its sign flipped"),
    ("tokenizer.py", "batch = -(mean_q * mean_q.clamp_min(1e-12).log()).sum() / z.shape[1]",
     "batch = -(mean_q * mean_q.clamp_min(1e-12).log()).sum()", "per-code batch entropy in nats per code, not per bit"),
    # lesson 3, mmu_attention_mask (t2i: four above)
    ('attention.py', 'return (is_token.cumsum(dim=1) - is_token.long()) == 0',
     'return is_token.cumsum(dim=1) == 0',
     'understanding prefix stops before <|eoi|>'),
    ("attention.py", "pad_rows = causal[None] & is_pad[:, None, :]", "pad_rows = torch.zeros_like(causal[None] & is_pad[:, None, :])",
     "[PAD] rows see nothing (softmax of an empty row)"),
    # lesson 4, apply_rotary and QKNormAttention
    ("model.py", "first, second = rot.chunk(2, dim=-1)", "first, second = rot[..., 0::2], rot[..., 1::2]",
     "apply_rotary pairs channels 2i and 2i+1 (interleaved) instead of i and i+dim/2"),
    ("model.py", "v = self.split_heads(self.v(x))  ", "v = apply_rotary(self.split_heads(self.v(x)), cos, sin)  ",
     "rotary embedding applied to the values too"),
    ("model.py", "k = torch.cat([past[0], k], dim=2)", "k = torch.cat([k, past[0]], dim=2)",
     "cached keys put after the new ones"),
    ("model.py", "return torch.cat([rot * cos + rotated_half * sin, keep], dim=-1)",
     "return torch.cat([rot * sin + rotated_half * cos, keep], dim=-1)", "apply_rotary swaps cos and sin"),
    # lesson 5, ntp_loss and mtp_loss (also above: NTP without the shift, MTP on the visible tokens)
    ('model.py', 'targets[:, :-1] = labels[:, 1:]',
     'targets[:, 1:] = labels[:, :-1]',
     'NTP predicts the previous token'),
    ('model.py', 'return F.cross_entropy(logits, targets[kept])',
     'return F.cross_entropy(logits, targets[kept], reduction="sum")',
     'losses summed instead of averaged'),
    ('model.py', '    return loss_at_targets(logits, labels)\n',
     '    return loss_at_targets(logits, next_token_targets(labels))\n',
     'MTP shifted like NTP'),
    ('model.py', '    if not kept.any():\n',
     '    if False:\n',
     'a batch with no target gives a NaN loss'),
    ("sampling.py", "return (1 + w) * cond_logits - w * uncond_logits",
     "return uncond_logits + w * (cond_logits - uncond_logits)", "guidance that gives the unconditional logits at w = 0"),
    ("sampling.py", "return (1 + w) * cond_logits - w * uncond_logits",
     "return (1 - w) * cond_logits + w * uncond_logits", "guidance towards the unconditional prediction"),
    ("sampling.py", "sampled = torch.multinomial(probs.flatten(0, 1), 1, generator=generator).view(tokens.shape)",
     "sampled = probs.argmax(-1)", "MaskGIT takes the argmax instead of sampling a code"),
    ("sampling.py", "n_mask = torch.floor(n * mask_schedule(r)).long()", "n_mask = torch.ceil(n * mask_schedule(r)).long()",
     "the paper's ceiling instead of the released floor"),
    ("sampling.py", "torch.full_like(chosen_prob, math.inf)", "chosen_prob.log()",
     "given tokens get no infinite confidence (they can be re-masked)"),
    # lesson 7, CachedNextToken (also above: positions restart at 0)
    ("sampling.py", "        self.length = total\n", "        self.length = seen\n", "the cache forgets how much it holds"),
    ("sampling.py", "return self.model.logits(hidden[:, -1])", "return self.model.logits(hidden[:, 0])",
     "the cache returns the first new token's logits, not the last"),
    # lesson 8, prediction_targets (also above: t2i shifted, AR t2i not shifted)
    ('train.py', '        return part.labels\n',
     '        return next_token_targets(part.labels)\n',
     "t2i rows trained with NTP's shift"),
    ("attention.py", "(blocks[:, :, None] == blocks[:, None, :]) & (blocks[:, :, None] > 0)",
     "(blocks[:, :, None] == blocks[:, None, :])", "text (block 0) sees later text: it is treated as one block"),
    ("attention.py", "return hide_padding(causal | same_block, is_pad)", "return causal | same_block",
     "the general rule lets real tokens see padding"),
    ("attention.py", "return hide_padding(causal | same_block, is_pad)",
     "return hide_padding(causal | (blocks[:, :, None] > 0), is_pad)", "a picture sees every later token"),
    ("attention.py", "return hide_padding(causal | same_block, is_pad)",
     "return hide_padding(causal | (same_block & causal), is_pad)", "pictures causal in the general rule"),
    ("stories.py", "return torch.where(frame, labels, next_token_targets(labels.masked_fill(frame, IGNORE)))", "return next_token_targets(labels)",
     "a story's frame trained by next-token prediction"),
    ("stories.py", "rows.append(story_sequence(sentences[:cut + 1],", "rows.append(story_sequence(sentences,",
     "a story row goes on past the masked frame"),
    ("stories.py", "        hidden = story.append(torch.cat(frame, dim=1))[:, -1]",
     "        hidden = story.peek(torch.cat(frame, dim=1))[:, -1]", "a finished frame never enters the story"),
    ("stories.py", "        start = 0 if self.naive else self.ids.shape[1]\n", "        start = 0\n",
     "the story cache recomputes everything"),
    ("stories.py", "        return guide(*logits.chunk(2), w) if w else logits", "        return logits[:len(logits) // 2] if w else logits",
     "story frames drawn without guidance"),
    # lesson 10, clip_pixels
    ("readers.py", "    left, top = (image.width - cfg.image_size) // 2, (image.height - cfg.image_size) // 2\n",
     "    left, top = 0, 0\n", "CLIP's crop taken from the corner, not the centre"),
    ("readers.py", "pixels = torch.from_numpy(crop).permute(2, 0, 1).float() / 255 ",
     "pixels = torch.from_numpy(crop).permute(2, 0, 1).float() ", "CLIP pixels not scaled to [0, 1]"),
    ("readers.py", "return ((pixels - mean) / std)[None]", "return ((pixels - std) / mean)[None]",
     "CLIP's mean and std swapped"),
    ("readers.py", "longer = int(cfg.resize_to * max(width, height) / min(width, height))",
     "longer = cfg.resize_to", "CLIP's resize squashes the picture to a square"),
]


def copy_repository(target):
    """The working tree without caches, outputs or git history."""
    ignore = shutil.ignore_patterns(".git", "__pycache__", ".pytest_cache", "out", "*.tmp", ".benchmarks")
    shutil.copytree(ROOT, target, ignore=ignore, dirs_exist_ok=True)


# The suite's files, quickest and most central first: most mutations are killed within
# seconds, and only a survivor pays for the whole suite (the lesson commands come last).
SLOW_LAST = ["test_attention.py", "test_model.py", "test_parity.py", "test_image_tokenizer.py",
             "test_text_tokenizer.py", "test_sampling.py", "test_fast_inference.py", "test_data.py",
             "test_train.py", "test_story.py", "test_clip.py", "test_exercises.py", "test_course.py"]


def run_suite(folder, timeout=900):
    """(passed, first failing test) of `pytest -x` in `folder`, every test file included."""
    files = sorted(path.name for path in (folder / "tests").glob("test_*.py"))
    ordered = [name for name in SLOW_LAST if name in files] + [name for name in files if name not in SLOW_LAST]
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-m", "not ddp", "-p", "no:cacheprovider",
               *[f"tests/{name}" for name in ordered]]
    try:
        result = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, "timed out"
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAILED") or line.startswith("ERROR")]
    return result.returncode == 0, failed[0] if failed else ""


def main(chosen):
    survivors = []
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary) / "repo"
        copy_repository(folder)
        passed, failure = run_suite(folder)
        if not passed:
            sys.exit(f"the unchanged suite fails ({failure}): fix that first")
        for number, (file, old, new, what) in enumerate(MUTATIONS, start=1):
            if chosen and number not in chosen:
                continue
            path = folder / file
            original = path.read_text()
            if original.count(old) != 1:
                sys.exit(f"mutation {number} ({what}): the text to change occurs {original.count(old)} times "
                         f"in {file}; update MUTATIONS")
            path.write_text(original.replace(old, new))
            started = time.time()
            passed, failure = run_suite(folder)
            path.write_text(original)
            verdict = "SURVIVED" if passed else "killed  "
            print(f"{number:2d}. {verdict} {file}: {what} ({time.time() - started:.0f} s)"
                  f"{'' if passed else '  <- ' + failure}", flush=True)
            if passed:
                survivors.append(number)
    tried = len(chosen) if chosen else len(MUTATIONS)
    print(f"\n{tried - len(survivors)} of {tried} mutations killed, {len(survivors)} survived"
          f"{': ' + ', '.join(map(str, survivors)) if survivors else ''}")
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main({int(arg) for arg in sys.argv[1:]}))

"""What each command does, step by step: a training run (`python train.py`) and every task of
`python sampling.py` (draw, film, inpaint, extend, ask, tell).

Reference beside the reading path: these functions put the paper's pieces in order for one
command. cli.py parses and checks the options first and turns any exception raised here
into one line; nothing here parses arguments or exits.

1. A training run: the run's state as a checkpoint stores it (`TrainingState`, resumable),
   the data, the four stages in order (`train_run`).
2. Sampling: a loaded checkpoint (`Session`), one function per task, and `sample`, which
   does the one task the options ask for and writes its outputs.

Read first: train.py and sampling.py.
"""

import time
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import data
from attention import check_text_fits
from checkpoint import TASKS, load_checkpoint, load_vision_tower, recommended_settings, save_checkpoint
from distributed import say
from evaluate import SCORES, ComputeMeter, Scoring, evaluate, format_scores, sample_grid
from pictures import (curves_picture, film_strip, image_grid, load_caption_folder, read_image, save_picture,
                      stitch_extension, story_strip, write_text)
from readers import answer_from_features, answer_with_clip, clip_pixels, picture_reader, stored_reader
from sampling import answer_questions, generate_pictures, mask_to_grid, shift_codes
from stories import STORY_FRAMES_SCORED, encode_stories, generate_stories, make_stories
from tensor_files import materialize
from model import Showo
from tokenizer import SPECIAL_TOKENS
from train import MixedBatches, TrainConfig, model_config, train_tokenizers, train_transformer


# ----------------------------------------------------------------------------------------
# 1. A training run
# ----------------------------------------------------------------------------------------

def config_to_dict(tc):
    """A TrainConfig as plain values (tuples as lists), for the checkpoint."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(tc).items()}


def config_from_dict(stored):
    """Undo config_to_dict (fields added since the checkpoint keep their defaults)."""
    known = {f.name: f.default for f in fields(TrainConfig)}
    return TrainConfig(**{k: tuple(v) if isinstance(known[k], tuple) and isinstance(v, list) else v
                          for k, v in stored.items() if k in known})


def sampling_settings(tc):
    """The recipe's picture-drawing settings, as sampling.generate_pictures takes them."""
    return {"steps": tc.sample_steps, "guidance": tc.guidance, "temperature": tc.sample_temperature,
            "top_k": tc.sample_top_k or None, "code_temperature": tc.sample_code_temperature}


@dataclass
class TrainingState:
    """Everything a checkpoint holds about a run besides the networks."""
    tc: TrainConfig
    preset: str
    step: int = 0                       # transformer steps done
    optimizer: dict = None
    history: list = None                # one {kind: loss} per step
    scores: list = None                 # one {"step", "tflop", score...} per evaluation
    meter: ComputeMeter = None
    data_dir: str = None                # your own pictures (--data-dir), or None: the shapes world
    readers: dict = None                # trained feature readers (the contrastive encoder's weights)

    def extra(self):
        """What save_checkpoint stores besides the networks. Three readers use it: sampling.py
        (the settings to draw with, the question template, what the model can do), evaluate.py
        (the recipe it was scored with) and --resume (the step, the optimizer, the data, the
        readers, so that a resumed run continues exactly where it stopped)."""
        settings = sampling_settings(self.tc)
        return {"sampling": {task: settings for task in TASKS}, "question_template": "{question}",
                "image_objective": self.tc.image_objective, "stories": self.tc.batch_story > 0,
                "mmu_features": self.tc.mmu_features, "tasks": trained_tasks(config_to_dict(self.tc)),
                "preset": self.preset, "train_config": config_to_dict(self.tc),
                "train_state": {"step": self.step, "optimizer": self.optimizer, "data_dir": self.data_dir,
                                "readers": self.readers or {}},
                "loss_history": self.history, "scores": self.scores, "compute": self.meter.to_dict()}

    @classmethod
    def from_extra(cls, extra, path, preset):
        """The run stored in a checkpoint's extra, to resume it; ValueError if there is none."""
        if "train_state" not in extra or "train_config" not in extra:
            raise ValueError(f"{path} holds no training run (a converted release?): --resume continues "
                             f"a checkpoint that train.py wrote")
        if extra.get("preset", "tiny") != preset:
            raise ValueError(f"{path} is a run of --preset {extra.get('preset')}: resume it with that preset")
        state, compute = extra["train_state"], extra.get("compute", {})
        return cls(config_from_dict(extra["train_config"]), preset, state["step"], materialize(state["optimizer"]),
                   list(extra.get("loss_history", [])), list(extra.get("scores", [])),
                   ComputeMeter(compute.get("stages")), state.get("data_dir"), materialize(state.get("readers", {})))


def trained_tasks(recipe):
    """What a run's model was trained to do, from its recipe (a TrainConfig as a dict): "draw"
    (t2i rows), "answer" (understanding rows), "tell" (story rows). sampling.py refuses a
    task a checkpoint was never trained for."""
    return [task for task, rows in (("draw", "batch_t2i"), ("answer", "batch_mmu"), ("tell", "batch_story"))
            if recipe.get(rows)]


def tasks_of(extra):
    """The tasks a checkpoint can do: as stored; else as its recipe says (a train.py run); else,
    for converted released weights, drawing and answering."""
    if "tasks" in extra:
        return extra["tasks"]
    if "train_config" in extra:
        return trained_tasks(extra["train_config"])
    return ["draw", "answer"] + (["tell"] if extra.get("stories") else [])


def training_set(data_dir, scenes, seed):
    """(pictures uint8 (B, 32, 32, 3), captions, question-answer lists, LM sentences).

    The shapes world (`scenes` pictures from `seed`), or a folder of your own pictures
    with a captions.jsonl, whose captions then serve as the captioning answers and the
    language-modelling text too. Pictures stay small and uint8 here; data.encode_pictures
    resizes a chunk at a time when the image tokenizer works at another resolution (a
    released one fine-tuned with train.py --init).
    """
    if data_dir:
        items = load_caption_folder(data_dir, data.IMAGE_SIZE)
        if not items:
            raise ValueError(f"no readable images listed in {data_dir}/captions.jsonl")
        captions = [caption for _, caption in items]
        return (np.stack([image for image, _ in items]), captions,
                [[("describe the image.", c)] for c in captions], captions)
    examples = data.make_examples(scenes, seed=seed)
    return (np.stack([e.image for e in examples]), [e.caption for e in examples], [e.qa for e in examples],
            data.text_corpus(scenes, seed))


def plain_texts(sentences, stories):
    """The texts of the plain-text (language-modelling) rows: the world's sentences, or in a
    story run its stories' change sentences ("the red circle turns green"). Those are short
    rows where the writer learns the world's rules (a recolour changes the colour) far more
    cheaply than in whole stories (docs/experiments.md, "Stories", lever 9)."""
    return [s for story in stories for s in story.sentences[1:]] if stories else sentences


def make_batches(cfg, tc, vq, text_tokenizer, training_data, stories, reader, process):
    """Stage 3 works on ids only: every picture is tokenized once, here, not per step."""
    images, captions, qa, sentences = training_data
    encode = text_tokenizer.encode
    caption_ids = [encode(c) for c in captions]
    # Answers are encoded with a leading space: GPT-2 style BPE spells " red" (the word
    # after a question) differently from "red" at the start of a text.
    qa_ids = [[(encode(q), encode(" " + a)) for q, a in pairs] for pairs in qa]
    story_ids = encode_stories(stories, vq, text_tokenizer, process.device) if stories else ()
    # A caption or sentence longer than its slots would be cut without a word.
    longest = max([*caption_ids, *(s for sentences, _ in story_ids for s in sentences)], key=len)
    check_text_fits(longest, cfg, f"max_text_len = {cfg.max_text_len}: the longest caption or sentence",
                    f"set at least --set max_text_len={len(longest) + 2}")
    return MixedBatches(cfg, tc, data.encode_pictures(vq, images, process.device), caption_ids, qa_ids,
                        [encode(s) for s in plain_texts(sentences, stories)], story_ids, rank=process.rank,
                        features=reader(images) if reader else None)


def scoring(tc):
    """How this recipe is scored (evaluate.py): its seed, sizes and sampling settings."""
    return Scoring(tc.seed, tc.eval_draws, tc.eval_prompts, tc.eval_scenes, tc.image_objective,
                   sampling_settings(tc), STORY_FRAMES_SCORED if tc.batch_story else 0)


def record_scores(model, vq, text_tokenizer, state, reader, step):
    """Score the model now; keep the scores with the step and the TFLOP spent so far."""
    scores = evaluate(model, vq, text_tokenizer, scoring(state.tc), reader, draw=state.tc.batch_t2i > 0)
    state.scores.append({"step": step, "tflop": state.meter.total / 1e12, **scores})
    tqdm.write(f"step {step}, {state.meter.total / 1e12:.1f} TFLOP: {format_scores(scores)}")


def starting_point(args, preset, tc, path, device):
    """(model or None, vq, text_tokenizer or None, TrainingState) for a fresh, resumed or reused start."""
    if args.resume:
        model, vq, text_tokenizer, extra = load_checkpoint(path, device)
        state = TrainingState.from_extra(extra, path, preset)
        if args.data_dir and Path(args.data_dir) != Path(state.data_dir or "."):
            raise ValueError(f"{path} was trained on {state.data_dir or 'the shapes world'}: resume without "
                             f"--data-dir (the run keeps its own data)")
        return model, vq, text_tokenizer, state
    state = TrainingState(tc, preset, history=[], scores=[], meter=ComputeMeter(), data_dir=args.data_dir,
                          readers={})
    source = args.init or args.tokenizers_from
    if not source:
        return None, None, None, state
    model, vq, text_tokenizer, extra = load_checkpoint(source, device)
    if args.init and model.cfg.clip_width and "mmu_features" not in extra:
        raise ValueError(f"--init {source} is the CLIP-ViT variant, which understands through its CLIP tower; "
                         f"train.py trains on codes or its own readers only: --init a MAGVIT-only checkpoint")
    # The tokenizers' training compute is part of this run's cost.
    reused = extra.get("compute", {}).get("stages", {})
    state.meter = ComputeMeter({stage: reused[stage] for stage in ("image tokenizer",) if stage in reused})
    return (model if args.init else None), vq, text_tokenizer, state


def train_run(args, preset, tc, path, process, progress):
    """Stages 1-4 of train.py, in order. `progress` records how far the run got (for Ctrl-C)."""
    model, vq, text_tokenizer, state = starting_point(args, preset, tc, path, process.device)
    tc = state.tc
    training_data = training_set(state.data_dir, tc.train_scenes, tc.seed)
    stories = make_stories(tc.train_stories, seed=f"{tc.seed}/stories") if tc.batch_story else []
    torch.manual_seed(tc.seed)
    started = time.time()
    args.out_dir.mkdir(parents=True, exist_ok=True)

    if vq is None:                                                     # stages 1-2
        text_tokenizer, vq = train_tokenizers(tc, training_data, stories, process, state.meter,
                                              shapes_world=not state.data_dir)
    reader = picture_reader(tc, vq, text_tokenizer, training_data, process, state)
    width = reader(training_data[0][:1]).shape[-1] if reader else 0
    # A fresh model is sized by the recipe and the tokenizers (vocabulary, code grid); one
    # from --init or --resume keeps its own sizes. Training always runs in float32.
    model = (model or Showo(model_config(tc, text_tokenizer, vq, width))).to(process.device).float()
    cfg = model.cfg
    say(process, f"transformer: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
                 f"vocabulary {cfg.vocab_size} = {cfg.llm_vocab_size} text + {len(SPECIAL_TOKENS)} special + "
                 f"{cfg.codebook_size} image + [MASK], {cfg.num_vq_tokens} image tokens per picture"
                 + (f"; resuming at step {state.step} of {tc.steps}" if state.step else ""))

    # Stage 3. Only the main process writes checkpoints and scores: under torchrun every
    # process holds the same weights (DDP averages the gradients), so one copy is enough.
    scored = process.main and not args.no_eval and not state.data_dir
    save = partial(save_run, path, model, vq, text_tokenizer) if process.main else None
    score = partial(record_scores, model, vq, text_tokenizer, state, reader) if scored else None
    batches = make_batches(cfg, tc, vq, text_tokenizer, training_data, stories, reader, process)
    progress["state"] = state
    train_transformer(model, batches, state, process, save, score)
    say(process, state.meter.report())

    # Stage 4: samples, held-out scores, training curves.
    if process.main:
        written = [path]
        if tc.batch_t2i:                                               # a model that draws
            save_picture(sample_grid(model, vq, text_tokenizer, scoring(tc)), args.out_dir / "samples.png")
            written.append(args.out_dir / "samples.png")
        say(process, f"wrote {' and '.join(map(str, written))} ({time.time() - started:.0f} s so far)")
        if scored:
            score(tc.steps)
            save(state)
        labels = {name: label for name, (_, label) in SCORES.items()}
        save_picture(curves_picture(state.history, state.scores, labels), args.out_dir / "curves.png")
        say(process, f"wrote {args.out_dir / 'curves.png'}; done in {time.time() - started:.0f} s")


def save_run(path, model, vq, text_tokenizer, state):
    """Write the checkpoint (checkpoint.save_checkpoint: a temporary file, then a rename)."""
    save_checkpoint(path, model, vq, text_tokenizer, extra=state.extra())


# ----------------------------------------------------------------------------------------
# 2. Sampling: one function per task
# ----------------------------------------------------------------------------------------

def phrase_question(text_tokenizer, cfg, template, question):
    """A question's ids, phrased as the checkpoint learned to read questions.

    The released weights were tuned on "USER: \\n<question> ASSISTANT:" (their
    inference_mmu.py asks that way); train.py's tiny models on the bare question.
    """
    ids = text_tokenizer.encode(template.format(question=question))
    check_text_fits(ids, cfg, "the question")
    return ids


class Session:
    """A loaded checkpoint and the settings of one command: what every task below needs."""

    def __init__(self, args, device):
        """Load the checkpoint once for the whole command: the transformer in bf16 on CUDA
        (its released precision), the image tokenizer always in float32."""
        self.args, self.device = args, device
        dtype = torch.bfloat16 if device == "cuda" else None
        self.model, self.vq, self.text_tokenizer, self.extra = load_checkpoint(args.ckpt, device, dtype)
        # The CLIP-ViT variant understands pictures through its CLIP tower (it still draws with MAGVIT).
        # (A train.py run with continuous mmu_features has a projector too, but no tower: it says
        # what it reads in "mmu_features".)
        released_clip = self.model.cfg.clip_width and "mmu_features" not in self.extra
        self.clip = load_vision_tower(args.ckpt, device, dtype) if released_clip else None
        self.generator = torch.Generator(device).manual_seed(args.seed)
        # Which way the checkpoint draws pictures: MaskGIT (Show-o) or raster order (the AR baseline).
        self.objective = self.extra.get("image_objective", "mtp")

    def encode_image(self, path):
        """An image file -> (1, N) codes, read at the size the image tokenizer works at."""
        picture = read_image(path, self.vq.cfg.resolution)
        return self.vq.encode(data.image_to_tensor(picture[None]).to(self.device))

    def settings(self, task):
        """The picture settings of a task: the checkpoint's, with what the command line chose."""
        settings = recommended_settings(self.extra, task)
        return {**settings, **{name: getattr(self.args, name) for name in settings
                               if getattr(self.args, name) is not None}}

    def paint(self, task, prompts, known=None, on_step=None):
        """Draw pictures for `prompts` (uint8 (B, H, W, 3)), with this task's settings."""
        captions = []
        for prompt in prompts:
            captions.append(self.text_tokenizer.encode(prompt))
            check_text_fits(captions[-1], self.model.cfg, "prompt")
        codes = generate_pictures(self.model, captions, self.objective, self.settings(task), self.generator,
                                  known, progress=True, naive=self.args.naive, on_step=on_step)
        return data.tensor_to_image(self.vq.decode(codes))


def draw(session, prompts):
    """Text-to-image: one picture per prompt."""
    return session.paint("t2i", prompts)


def film(session, prompt):
    """Text-to-image for one prompt, every step kept: the film strip of MaskGIT decoding."""
    frames, masked = [], []

    def keep(codes, still_masked):      # maskgit's on_step: each step's guess and what stays masked
        frames.append(codes.clone())
        masked.append(still_masked.clone())
    session.paint("t2i", [prompt], on_step=keep)
    # MaskGIT keeps at least one token masked until the loop ends (maskgit_step's clamp);
    # the picture it returns is the last step's full guess, so the last frame shows that,
    # with nothing grey.
    masked[-1] = torch.zeros_like(masked[-1])
    if len(frames) > 16:                   # raster order takes one step per token: show 16 of them
        keep_steps = torch.linspace(0, len(frames) - 1, 16).round().long().tolist()
        frames, masked = [frames[i] for i in keep_steps], [masked[i] for i in keep_steps]
    pictures = data.tensor_to_image(session.vq.decode(torch.cat(frames)))
    return film_strip(pictures, torch.cat(masked).cpu(), session.vq.cfg.grid_size)


def inpaint(session, image_path, mask_path, prompt):
    """Repaint the white part of the mask, keeping the rest of the picture's tokens."""
    codes = session.encode_image(image_path)
    mask = torch.as_tensor(read_image(mask_path, session.vq.cfg.resolution)[..., 0] > 127)
    repaint = mask_to_grid(mask, session.vq.cfg.grid_size).to(session.device)
    if not repaint.any():
        grid = session.vq.cfg.grid_size
        raise ValueError(f"--mask {mask_path} selects nothing to repaint: paint white at least half of one "
                         f"of the {grid}x{grid} cells the picture is tokenized into")
    codes[:, repaint] = -1
    return session.paint("inpainting", [prompt], codes)[0]


def extend(session, image_path, direction, prompt):
    """Extrapolate: the picture grown by half its side towards `direction`."""
    codes = shift_codes(session.encode_image(image_path), direction, session.vq.cfg.grid_size)
    canvas = session.paint("extrapolation", [prompt], codes)[0]
    return stitch_extension(read_image(image_path, session.vq.cfg.resolution), canvas, direction)


def ask(session, image_path, question):
    """Answer a question about a picture, phrased with the checkpoint's question template."""
    args, model = session.args, session.model
    question_ids = phrase_question(session.text_tokenizer, model.cfg,
                                   session.extra.get("question_template", "{question}"), question)
    temperature = (1.0 if args.temperature is None else args.temperature) if args.top_k or args.sample else 0.0
    settings = (args.max_new_tokens, temperature, args.top_k, session.generator, args.naive)
    if session.clip is not None:
        system_ids = session.text_tokenizer.encode(session.extra.get("system_prompt", ""))
        pixels = clip_pixels(image_path, session.clip.cfg).to(session.device)
        [answer] = answer_with_clip(model, session.clip, pixels, system_ids, [question_ids], *settings)
    elif session.extra.get("mmu_features", "codes") != "codes":
        reader = stored_reader(session.extra, session.vq, session.text_tokenizer, session.device)
        features = reader(read_image(image_path, session.vq.cfg.resolution)[None]).to(session.device)
        [answer] = answer_from_features(model, features, [question_ids], *settings)
    else:
        [answer] = answer_questions(model, session.encode_image(image_path), [question_ids], *settings)
    return session.text_tokenizer.decode(answer).strip()


def tell(session, opening, frames, image_path=None):
    """A story from its opening sentence: (F, H, W, 3) uint8 frames and F sentences.

    image_path: a picture to start from (its frame is given, not drawn; the opening
    sentence is the sentence of that frame)."""
    ids = session.text_tokenizer.encode(opening)
    check_text_fits(ids, session.model.cfg, "--story")
    first = session.encode_image(image_path) if image_path else None
    codes, written = generate_stories(session.model, [ids], frames, session.settings("t2i"), session.generator, first,
                                      session.args.naive, text_temperature=1.0 if session.args.sample else 0.0,
                                      progress=True)
    # one line each (story.txt has a sentence a line): any run of whitespace becomes one space
    sentences = [" ".join(opening.split())] + [" ".join(session.text_tokenizer.decode(s).split())
                                               for s in written[0]]
    return data.tensor_to_image(session.vq.decode(codes[0])), sentences


def check_against_model(session):
    """The values that depend on the loaded model: refuse what the model cannot do."""
    args, cfg, extra = session.args, session.model.cfg, session.extra
    tasks = tasks_of(extra)
    if args.story is not None:
        task, flag = "tell", "--story"
    else:
        task, flag = ("answer", "--question") if args.question is not None else ("draw", "--prompt")
    if task not in tasks:
        raise ValueError(f"{args.ckpt} was never trained to {task} ({flag}): it was trained to "
                         f"{' and '.join(tasks) or 'nothing'}" + (
                             "; train a story model with python train.py --preset story" if task == "tell" else ""))
    if args.steps is not None and session.objective == "ar" and args.question is None:
        raise ValueError(f"--steps {args.steps}: {args.ckpt} draws in raster order, one step per image token "
                         f"({cfg.num_vq_tokens}): drop --steps")
    if args.steps is not None and session.objective == "mtp" and args.steps > cfg.num_vq_tokens:
        raise ValueError(f"--steps {args.steps}: a picture has {cfg.num_vq_tokens} image tokens and every "
                         f"step commits at least one: give at most {cfg.num_vq_tokens}")
    if args.top_k is not None and args.question is None and session.objective == "mtp":
        raise ValueError("--top-k applies to answers and to a raster-order (ar) checkpoint's pictures; "
                         "MaskGIT samples each token from all codes: drop --top-k")
    if args.code_temperature is not None and (args.question is not None or session.objective == "ar"):
        raise ValueError("--code-temperature is MaskGIT's (an mtp checkpoint's pictures and story frames); answers "
                         "and raster-order pictures take --temperature: drop --code-temperature")
    if args.top_k is not None:
        choices = cfg.llm_vocab_size if args.question is not None else cfg.codebook_size
        if args.top_k > choices:
            kind = "text ids" if args.question is not None else "image codes"
            raise ValueError(f"--top-k {args.top_k}: this model chooses among {choices} {kind}: give at most that")


def sample(args, prompts, out, device):
    """Load the checkpoint, then do the one task the options ask for and write `out` (checked
    by cli.py before any work, like every other output)."""
    session = Session(args, device)
    check_against_model(session)
    if args.out_dir:
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    if args.story is not None:
        frames, sentences = tell(session, args.story, args.frames or 3, args.image)
        save_picture(story_strip(frames, sentences), out)
        if args.out_dir:
            for k, frame in enumerate(frames, start=1):
                save_picture(frame, Path(args.out_dir) / f"frame_{k}.png")
            write_text(Path(args.out_dir) / "story.txt", "".join(sentence + "\n" for sentence in sentences))
        print("\n".join(f"{k}. {sentence}" for k, sentence in enumerate(sentences, start=1)))
        print(f"wrote {out}" + (f" and frame_1.png ... frame_{len(frames)}.png, story.txt in {args.out_dir}"
                                if args.out_dir else ""))
    elif args.question is not None:
        print(ask(session, args.image, args.question) or "(no answer: the model ended it at once)")
    elif args.film:
        save_picture(film(session, prompts[0]), out)
        print(f"wrote {out}: the picture after each decoding step, tokens not yet drawn grey")
    elif args.image:
        picture = (inpaint(session, args.image, args.mask, prompts[0]) if args.mask
                   else extend(session, args.image, args.extend, prompts[0]))
        save_picture(picture, out)
        print(f"wrote {out}")
    elif len(prompts) == 1 and not args.out_dir:
        save_picture(draw(session, prompts)[0], out)
        print(f"wrote {out}")
    else:
        pictures = draw(session, prompts)
        if args.out_dir:
            for i, picture in enumerate(pictures):
                save_picture(picture, Path(args.out_dir) / f"{i:03d}.png")
        save_picture(image_grid(pictures), out)
        print(f"wrote {out}: a grid of {len(prompts)} pictures, in the order of the prompts"
              + (f", and each as {args.out_dir}/000.png ..." if args.out_dir else ""))

"""Can the stand-in listener learn to point? A probe of the simulated study's small Idefics2,
outside the loop, on first turns only (one description, no dialogue history).

    .venv/bin/python bench/pointer_probe.py --task describe      # the listener's real task
    .venv/bin/python bench/pointer_probe.py --task text-only     # does it read the description?
    .venv/bin/python bench/pointer_probe.py --task odd-one-out   # can it point at an image at all?
    .venv/bin/python bench/pointer_probe.py --task describe+caption --steps 7000   # with captions
    .venv/bin/python bench/pointer_probe.py --align-steps 1500 --recall-steps 1000 --steps 1500

``describe``: ``--images`` tangrams with crowd descriptions on screen, the speaker describes one
of them; the right letter depends on the description AND on where that image is (the listener's
whole task). ``text-only``: the same prompts, but the target's letter is fixed by its tangram
(A for half of them, B for the other half), so the description alone decides and the images
can be ignored. ``odd-one-out``: the other images are KiloGram tangrams no one described, so the
images alone decide (point at the one that is a described tangram) and the description can be
ignored. ``describe+caption``: every other batch is a caption task instead ("describe C" →
one of that tangram's crowd descriptions, the token loss over the whole caption), the others
``describe``; the accuracies are ``describe``'s (``describe+odd``, ``describe+recall``: the
same with odd-one-out or recall batches, in turn). Each held-out accuracy is over new contexts with descriptions never trained on
(``describe``, ``text-only``) or new contexts (``odd-one-out``); chance is 1/``--images``.

Two optional stages run first. ``--align-steps``: the vision encoder and connector are trained
alone (MSE, lr 1e-2 decaying to 1e-4) to turn each described tangram's image into the input
embeddings of its 4 most distinctive description words (TF-IDF over its trained descriptions),
and keep one such step after every later step: images the text model can read like words.
``--recall-steps``: associative recall in the listener's layout, words instead of images (each
image's slots hold 4 random vocabulary words, the speaker says one image's words shuffled, the
answer is that image's letter): the match-and-copy circuit a pretrained language model has.
``--image-words`` replaces each tangram's image by 4 fixed vocabulary words of its own (a
discrete, trainable key instead of vision features); ``--tie`` builds the stand-in with tied
input and output word embeddings (it needs its own ``--out``).

The model, prompt builder, collator and loss are the study's own (``sim.base``,
``policy_worker.prompt``, ``learning.datasets``): what fails here fails in the study.
"""

from __future__ import annotations

import argparse
import math
from collections import Counter
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REFERENCE = ROOT.parent / "shared" / "reference" / "kilogram"
TASKS = ("describe", "text-only", "odd-one-out", "describe+caption", "describe+odd", "describe+odd+caption", "describe+recall", "describe+recall+caption")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=TASKS, default="describe")
    ap.add_argument("--images", type=int, default=2, help="images per game (the study shows 10)")
    ap.add_argument("--tangrams", type=int, default=74, help="described tangrams in play")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eval-every", type=int, default=200)
    ap.add_argument("--annotations", type=Path, default=REFERENCE / "dense_annotations.json")
    ap.add_argument("--svgs", type=Path, default=REFERENCE / "tangrams-svg")
    ap.add_argument("--out", type=Path, default=ROOT / "var" / "pointer-probe", help="the random stand-in is built here")
    ap.add_argument("--recall-steps", type=int, default=0, help="first train this many steps of word recall (4 words in each image's slots; the speaker says them)")
    ap.add_argument("--align-steps", type=int, default=0, help="first align the connector: each tangram's image tokens -> the embeddings of its 4 most distinctive description words (then one align step after every step)")
    ap.add_argument("--text-layers", type=int, default=None, help="the stand-in's text layers (default: the study's)")
    ap.add_argument("--image-words", action="store_true", help="replace each tangram's image by 4 fixed random vocabulary words of its own (trainable embeddings): can the text model bind a description to a discrete key at all?")
    ap.add_argument("--tie", action="store_true", help="build the stand-in with tied input and output word embeddings")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    for path in (a.annotations, a.svgs):
        if not path.exists():
            ap.error(f"{path} does not exist: pass --annotations / --svgs (KiloGram, `multiref tangrams fetch`)")

    import torch
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from learning.datasets import ActionCollator, Example, Sample, model_inputs
    from learning.retrospect import FeedbackTemplate
    from policy_worker.gamedata import TangramImages
    from policy_worker.model import load_policy
    from policy_worker.prompt import LETTERS, PromptGame, PromptTurn
    from sim.base import ModelSize, _token_loss, build_small_idefics2
    from sim.speakers import Descriptions

    torch.manual_seed(a.seed)
    everything = Descriptions.load(a.annotations)
    described = [t for t in everything.tangrams if (a.svgs / f"{t}.svg").is_file()][: a.tangrams]
    undescribed = sorted(p.stem for p in a.svgs.glob("*.svg") if p.stem not in everything.all)
    if len(described) < a.images:
        ap.error(f"only {len(described)} described tangrams: need --images or more")
    corpus = [d for t in described for d in everything.all[t]] * 3 + [FeedbackTemplate.load(None, "binary").text] * 30
    if not (a.out / "config.json").is_file():
        size = ModelSize(seed=a.seed)
        if a.text_layers:
            size.text_layers = a.text_layers
        size.tie_embeddings = a.tie
        build_small_idefics2(a.out, corpus, size)
    policy = load_policy(a.out, dtype="float32", device="cpu")
    model = policy.model
    if bool(model.config.tie_word_embeddings) != a.tie:
        ap.error(f"{a.out} holds a stand-in built {'without' if a.tie else 'with'} --tie: pass another --out")
    for frozen in (model.model.vision_model, model.model.connector):  # as the study's pre-training
        frozen.requires_grad_(False)
    collator = ActionCollator(policy, TangramImages(a.svgs).images, with_allowed=False)
    letter_ids = [policy.tokenizer.encode(" " + x, add_special_tokens=False)[-1] for x in LETTERS[: a.images]]

    train, test = {}, {}  # a fifth of each tangram's distinctive descriptions held out
    for t in described:
        ds = list(everything.distinctive[t])
        random.Random(a.seed + 1).shuffle(ds)
        k = max(1, len(ds) // 5)
        test[t], train[t] = ds[:k], ds[k:]

    tok = policy.tokenizer
    image_id = model.config.image_token_id
    words = sorted(w for w in tok.get_vocab() if w.startswith("▁") and w[1:].isalpha() and len(w) >= 4)
    word_id = {w: tok.convert_tokens_to_ids(w) for w in words}

    def recall(rng: random.Random) -> tuple[Sample, int, list[list[str]]]:
        """Associative recall in the listener's layout: each image's slots hold 4 words; the
        speaker says one image's words (shuffled); the answer is the letter after them."""
        context = rng.sample(described, a.images)
        index = rng.randrange(a.images)
        items = [rng.sample(words, 4) for _ in context]
        said = rng.sample(items[index], 4)
        prompt = PromptGame(context, [PromptTurn("choose the " + " ".join(w[1:] for w in said), [], None)])
        action = f"select {LETTERS[index]}"
        return Sample(Example("probe", 1, prompt, action, 1, None), prompt, action), index, items

    def recall_batch(items: list, batch: dict | None = None) -> dict:
        batch = batch if batch is not None else collator([s for s, _, _ in items])
        ids = batch["input_ids"]
        for row, (_, _, slots) in enumerate(items):
            where = (ids[row] == image_id).nonzero().flatten()
            per = len(where) // len(slots)
            fill = [word_id[w] for item in slots for w in (item * per)[:per]]
            ids[row, where] = torch.tensor(fill)
        batch.pop("pixel_values", None)
        batch.pop("pixel_attention_mask", None)
        return batch

    connector = model.model.connector
    emb = model.get_input_embeddings()
    df: Counter = Counter()
    tf: dict[str, Counter] = {}
    for t in described:
        c = Counter(i for d in train[t] for i in tok.encode(" " + d, add_special_tokens=False) if tok.convert_ids_to_tokens(i) in word_id and len(tok.convert_ids_to_tokens(i)) >= 4)
        tf[t] = c
        df.update(set(c))
    n_tok = model.config.perceiver_config.resampler_n_latents
    salient = {t: [i for i, _ in sorted(tf[t].items(), key=lambda kv: -kv[1] * math.log(len(described) / df[kv[0]]))[:n_tok]] for t in described}
    salient = {t: (v * n_tok)[:n_tok] for t, v in salient.items()}
    align_ids = torch.tensor([salient[t] for t in described])
    align_pixels = collator.pixels([described])
    align_opt = torch.optim.AdamW([*connector.parameters(), *model.model.vision_model.parameters()], lr=1e-2, weight_decay=0.0)

    def align_step() -> float:
        connector.requires_grad_(True)
        model.model.vision_model.requires_grad_(True)
        feats = model.model.get_image_features(align_pixels["pixel_values"], align_pixels["pixel_attention_mask"]).pooler_output[0]
        target = emb(align_ids).detach().reshape(-1, feats.shape[-1])
        loss = torch.nn.functional.mse_loss(feats, target) / target.pow(2).mean()
        align_opt.zero_grad(set_to_none=True)
        loss.backward()
        align_opt.step()
        connector.requires_grad_(False)
        model.model.vision_model.requires_grad_(False)
        return loss.item()

    def caption(rng: random.Random) -> Sample:
        """An image-caption pair in the policy prompt: which image, then what it looks like."""
        context = rng.sample(described, a.images)
        i = rng.randrange(a.images)
        prompt = PromptGame(context, [PromptTurn(f"describe {LETTERS[i]}", [], None)])
        text = rng.choice(train[context[i]])
        return Sample(Example("probe", 1, prompt, text, 1, None), prompt, text)

    def game(rng: random.Random, descriptions: dict[str, list[str]], kind: str | None = None) -> tuple[Sample, int]:
        kind = kind or ("describe" if a.task.startswith("describe") else a.task)
        if kind == "odd-one-out":
            target = rng.choice(described)
            context = [target, *rng.sample(undescribed, a.images - 1)]
            rng.shuffle(context)
        else:
            context = rng.sample(described, a.images)
            target = rng.choice(context)
            if kind == "text-only":  # the target's place is fixed by which half it belongs to
                rest = [t for t in context if t != target]
                context = [target, *rest] if described.index(target) % 2 == 0 else [*rest, target]
        index = context.index(target)
        prompt = PromptGame(context, [PromptTurn(f"choose the {rng.choice(descriptions[target])}", [], None)])
        action = f"select {LETTERS[index]}"
        return Sample(Example("probe", 1, prompt, action, 1, None), prompt, action), index

    key_words = {t: random.Random(f"{a.seed}-{t}").sample(words, 4) for t in described}

    def batch_of(samples: list[Sample]) -> dict:
        """The collated batch; with --image-words, each image's slots hold its tangram's 4 words."""
        if not a.image_words:
            return collator(samples)
        return recall_batch([(s, 0, [key_words.get(t) or key_words[described[0]] for t in s.game.listener_order]) for s in samples])

    def letter_logits(samples: list[Sample], batch: dict | None = None) -> tuple[torch.Tensor, dict]:
        batch = batch if batch is not None else batch_of(samples)
        assert batch["targets"].shape[1] >= 2, "an action is 'select' then the letter"
        logits = model(**model_inputs(batch, policy.device, policy.dtype), logits_to_keep=batch["targets"].shape[1] + 1).logits
        return logits[:, 1], batch  # the position that predicts the letter, whole vocabulary

    def accuracy(items: list[tuple[Sample, int]]) -> float:
        model.eval()
        right = 0
        with torch.no_grad():
            for k in range(0, len(items), 50):
                chunk = items[k : k + 50]
                scores, _ = letter_logits([s for s, _ in chunk])
                right += sum(int(p) == i for p, (_, i) in zip(scores[:, letter_ids].argmax(-1).tolist(), chunk))
        model.train()
        return right / len(items)

    held_out = [game(random.Random(10_000 + i), test if a.task != "odd-one-out" else train) for i in range(200)]
    seen = [game(random.Random(20_000 + i), train) for i in range(200)]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.01)

    def recall_loss(rng: random.Random) -> torch.Tensor:
        items = [recall(rng) for _ in range(a.batch)]
        scores, _ = letter_logits([], recall_batch(items))
        return torch.nn.functional.cross_entropy(scores, torch.tensor([letter_ids[i] for _, i, _ in items]))

    def recall_accuracy(tests: list) -> float:
        model.eval()
        with torch.no_grad():
            scores, _ = letter_logits([], recall_batch(tests))
        model.train()
        return sum(int(p) == i for p, (_, i, _) in zip(scores[:, letter_ids].argmax(-1).tolist(), tests)) / len(tests)

    def train_step(loss: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if a.align_steps:
            align_step()
    rng = random.Random(a.seed)
    table = Table(title=f"pointer probe: {a.task}, {a.images} images, {len(described)} tangrams, lr {a.lr:g}")
    for col in ("step", "loss" if "+" in a.task else "letter loss", "chance loss", "acc. trained", "acc. held out", "chance", "s"):
        table.add_column(col, justify="right")
    started, losses = time.perf_counter(), []
    model.train()
    with Progress(console=Console(stderr=True)) as progress:
        task = progress.add_task(f"probe {a.task}", total=a.steps)
        if a.align_steps:
            print("salient words:", {t: tok.convert_ids_to_tokens(salient[t]) for t in described[:4]})
            decay = torch.optim.lr_scheduler.CosineAnnealingLR(align_opt, a.align_steps, eta_min=1e-4)
            for step in range(1, a.align_steps + 1):
                x = align_step()
                decay.step()
                if step % 100 == 0:
                    print(f"align step {step}: relative mse {x:.3f}", flush=True)
        if a.recall_steps:
            recall_test = [recall(random.Random(30_000 + i)) for i in range(100)]
            for step in range(1, a.recall_steps + 1):
                loss = recall_loss(rng)
                train_step(loss)
                if step % a.eval_every == 0 or step == a.recall_steps:
                    acc = recall_accuracy(recall_test)
                    print(f"recall step {step}: loss {loss.item():.3f}, held-out recall accuracy {acc:.0%}, describe {accuracy(held_out):.0%}", flush=True)
        for step in range(1, a.steps + 1):
            mix = a.task.split("+")[1:]  # the helper tasks, one batch each in turn with describe
            helper = mix[step % (len(mix) + 1) - 1] if mix and step % (len(mix) + 1) else None
            if helper == "caption":
                batch = batch_of([caption(rng) for _ in range(a.batch)])
                width = batch["targets"].shape[1]
                logits = model(**model_inputs(batch, policy.device, policy.dtype), logits_to_keep=width + 1).logits
                loss = _token_loss(logits[:, :-1], batch["targets"], batch["target_mask"].float())
            elif helper == "recall":
                loss = recall_loss(rng)
            else:
                items = [game(rng, train, "odd-one-out" if helper == "odd" else None) for _ in range(a.batch)]
                scores, _ = letter_logits([s for s, _ in items])
                loss = torch.nn.functional.cross_entropy(scores, torch.tensor([letter_ids[i] for _, i in items]))
            train_step(loss)
            losses.append(loss.item())
            progress.update(task, advance=1, description=f"probe {a.task} (letter loss {loss.item():.3f})")
            if step % a.eval_every == 0 or step == a.steps:
                recent = losses[-a.eval_every :]
                row = [
                    str(step), f"{sum(recent) / len(recent):.3f}", f"{math.log(a.images):.3f}",
                    f"{accuracy(seen):.0%}", f"{accuracy(held_out):.0%}", f"{1 / a.images:.0%}",
                    f"{time.perf_counter() - started:.0f}",
                ]
                table.add_row(*row)
                line = " | ".join(row)
                if a.recall_steps:  # does the recall circuit survive describe?
                    line += f" | recall {recall_accuracy(recall_test):.0%}"
                print(line, flush=True)
    Console().print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A tiny random-weight Idefics2 with its own tokenizer, for tests and local demos.

It is saved in the same layout as a hub checkpoint (config, safetensors, tokenizer, processor
config with the chat template), so `load_policy(str(dir))` exercises exactly the code path that
loads `HuggingFaceM4/idefics2-8b`. Nothing is downloaded.
"""

from __future__ import annotations

import logging
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

logger = logging.getLogger("multiref.policy")

# Idefics2's chat template (HuggingFaceM4/idefics2-8b processor_config.json), verbatim: the tiny
# model must render prompts exactly like the real one so the pinned prompt test means something.
IDEFICS2_CHAT_TEMPLATE = (
    "{% for message in messages %}{{message['role'].capitalize()}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# docs/method.md: LoRA on the text model's attention and MLP projections.
TEXT_LORA_TARGETS = r".*text_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"

IMAGE_SIZE = 224  # docs/method.md: images at 224 px, no splitting.
TINY_IMAGE_SEQ_LEN = 16  # perceiver latents per image (64 in the real model); kept small for speed.

# Special tokens in Idefics2's order: <unk>=0, <s>=1, </s>=2, then the image and turn markers.
_SPECIAL_TOKENS = [
    "<unk>",
    "<s>",
    "</s>",
    "<fake_token_around_image>",
    "<image>",
    "<end_of_utterance>",
]

# Words the prompts and actions use, plus common speaker words: the BPE merges them into single
# tokens so prompts stay short; any other ASCII text still tokenizes via the character alphabet.
_CORPUS_LINES = [
    "System: none is selected",
    "\nSystem: A C currently selected",
    "\nUser: choose the bird",
    "\nAssistant: select A B",
    "\nAssistant: deselect C select G",
    "\nAssistant: nothing",
    "Assistant:",
    "none is selected",
    "A B C D E F G H I J currently selected",
    "select A B C D E F G H I J",
    "deselect A B C D E F G H I J select A B C D E F G H I J",
    "nothing",
    "choose the shape that looks like a bird with wings on top of a triangle",
    "correct now pick the person sitting down with a hat and the boat",
    "incorrect delete your choice undo no not that one wrong try again yes good",
    "the letter E turned on its side the double archway the hook small big square",
    "left right top bottom corner middle head arms legs house dog cat fish rabbit",
]


def train_tokenizer(lines: list[str], vocab_size: int, min_frequency: int) -> "object":
    """Train a small Llama-style (Metaspace BPE) tokenizer: word boundaries act like the real's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    metaspace = {"replacement": "▁", "prepend_scheme": "first", "split": True}
    tok.pre_tokenizer = pre_tokenizers.Metaspace(**metaspace)
    tok.decoder = decoders.Metaspace(**metaspace)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_SPECIAL_TOKENS,
        initial_alphabet=list(string.printable.strip()) + ["▁", "\n", "\t"],
        min_frequency=min_frequency,
        show_progress=False,
    )
    tok.train_from_iterator(lines, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return tok


@dataclass
class Idefics2Sizes:
    """What a small Idefics2 built here is made of: the tests' tiny model and the simulated
    study's stand-in differ only in these numbers (and in the stand-in's connector re-init)."""

    image_size: int = IMAGE_SIZE
    patch_size: int = 28  # 8x8 patches per 224-px image: cheap, at the real resolution
    vision_hidden: int = 32
    vision_layers: int = 1
    image_tokens: int = TINY_IMAGE_SEQ_LEN
    resampler_head_dim: int = 16
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 4
    tie_embeddings: bool = False


def build_idefics2(
    out_dir: str | Path,
    tokenizer_object: "object",
    sizes: Idefics2Sizes,
    seed: int = 0,
    prepare: Callable[[Any], None] | None = None,
) -> Path:
    """Build a random Idefics2 of ``sizes`` around a trained tokenizer and save it like a hub
    checkpoint (model, tokenizer, processor with the chat template); ``prepare`` may change the
    model's weights before it is saved."""
    import torch
    from transformers import (
        Idefics2Config,
        Idefics2ForConditionalGeneration,
        Idefics2ImageProcessorPil,
        Idefics2Processor,
        PreTrainedTokenizerFast,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer_object,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<unk>",
        additional_special_tokens=["<fake_token_around_image>", "<image>", "<end_of_utterance>"],
        chat_template=IDEFICS2_CHAT_TEMPLATE,
        padding_side="left",
    )
    processor = Idefics2Processor(
        image_processor=Idefics2ImageProcessorPil(
            do_image_splitting=False,
            size={"shortest_edge": sizes.image_size, "longest_edge": sizes.image_size},
        ),
        tokenizer=tokenizer,
        image_seq_len=sizes.image_tokens,
        chat_template=IDEFICS2_CHAT_TEMPLATE,
    )
    config = Idefics2Config(
        vision_config={
            "hidden_size": sizes.vision_hidden,
            "intermediate_size": sizes.vision_hidden * 2,
            "num_hidden_layers": sizes.vision_layers,
            "num_attention_heads": 2,
            "image_size": sizes.image_size,
            "patch_size": sizes.patch_size,
        },
        perceiver_config={
            "hidden_size": sizes.text_hidden,
            "rms_norm_eps": 1e-5,
            "resampler_n_latents": sizes.image_tokens,
            "resampler_depth": 1,
            "resampler_n_heads": 2,
            "resampler_head_dim": sizes.resampler_head_dim,
            "num_key_value_heads": 1,
        },
        text_config={
            "model_type": "mistral",
            "vocab_size": len(tokenizer),
            "hidden_size": sizes.text_hidden,
            "intermediate_size": sizes.text_hidden * 2,
            "num_hidden_layers": sizes.text_layers,
            "num_attention_heads": sizes.text_heads,
            "num_key_value_heads": max(1, sizes.text_heads // 2),
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5,
            "sliding_window": None,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        tie_word_embeddings=sizes.tie_embeddings,
    )
    torch.manual_seed(seed)
    model = Idefics2ForConditionalGeneration(config)
    if prepare is not None:
        prepare(model)
    model.generation_config.eos_token_id = [
        tokenizer.convert_tokens_to_ids("<end_of_utterance>"),
        tokenizer.eos_token_id,
    ]
    model.save_pretrained(out)
    processor.save_pretrained(out)
    logger.info("idefics2 saved to %s (%d parameters)", out, model.num_parameters())
    return out


def build_tiny_idefics2(out_dir: str | Path, seed: int = 0) -> Path:
    """Build and save a tiny random Idefics2 (model + processor) loadable with `load_policy`."""
    lines = [line for line in _CORPUS_LINES for _ in range(3)]
    return build_idefics2(out_dir, train_tokenizer(lines, 400, 1), Idefics2Sizes(), seed)


def make_tiny_lora(model_dir: str | Path, out_dir: str | Path, seed: int) -> Path:
    """Save a random non-zero LoRA adapter for the tiny model: distinct seeds, distinct policies."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(seed)
    base = AutoModelForImageTextToText.from_pretrained(str(model_dir), dtype=torch.float32)
    lora = LoraConfig(
        r=8,
        lora_alpha=8,
        lora_dropout=0.1,
        target_modules=TEXT_LORA_TARGETS,
        init_lora_weights="gaussian",
    )
    peft_model = get_peft_model(base, lora)
    # Gaussian init leaves B at zero (adapter == base); randomise B so the adapter changes outputs.
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    out = Path(out_dir)
    peft_model.save_pretrained(out)
    return out

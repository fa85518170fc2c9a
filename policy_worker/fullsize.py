"""An Idefics2 with the 8B configuration and random weights, built without any download.

For benchmarks on an accelerator: the shapes (Mistral-7B text model, SigLIP-so400m vision
encoder, 64-latent perceiver) are those of ``HuggingFaceM4/idefics2-8b``, so latency and memory
are the real model's; the outputs are noise. The processor is the tiny model's (its tokenizer
fits inside the 32,003-token vocabulary) with 64 image tokens per image, as in the real model.
"""

from __future__ import annotations

from pathlib import Path

import torch

from policy_worker.model import LoadedPolicy, load_processor, resolve_device, resolve_dtype

IMAGE_SEQ_LEN = 64


def idefics2_8b_config(image_token_id: int, pad_token_id: int = 0):
    from transformers import Idefics2Config

    return Idefics2Config(
        vision_config={
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_hidden_layers": 27,
            "num_attention_heads": 16,
            "image_size": 980,
            "patch_size": 14,
        },
        perceiver_config={
            "hidden_size": 4096,
            "resampler_n_latents": IMAGE_SEQ_LEN,
            "resampler_depth": 3,
            "resampler_n_heads": 16,
            "resampler_head_dim": 96,
            "num_key_value_heads": 4,
        },
        text_config={
            "model_type": "mistral",
            "vocab_size": 32003,
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-5,
            "sliding_window": None,
            "pad_token_id": pad_token_id,
        },
        image_token_id=image_token_id,
        tie_word_embeddings=False,
    )


def meta_model(config):
    """The model's modules on the meta device: shapes only, no memory."""
    from transformers import Idefics2ForConditionalGeneration

    with torch.device("meta"):
        return Idefics2ForConditionalGeneration(config)


def _recompute_buffers(model) -> None:
    """Buffers are computed, not learned (rotary frequencies): rebuild them after to_empty."""
    for module in model.modules():
        if hasattr(module, "inv_freq") and hasattr(module, "compute_default_rope_parameters"):
            inv_freq, _ = module.compute_default_rope_parameters(module.config, device=module.inv_freq.device)
            module.inv_freq.copy_(inv_freq)
            module.original_inv_freq.copy_(inv_freq)


@torch.no_grad()
def build_random_8b(tiny_dir: Path, device: str = "cuda", dtype: str = "bfloat16", seed: int = 0) -> LoadedPolicy:
    """Materialise the 8B-shaped model on ``device`` with random weights."""
    processor = load_processor(tiny_dir)
    processor.image_seq_len = IMAGE_SEQ_LEN
    tok = processor.tokenizer
    config = idefics2_8b_config(tok.convert_tokens_to_ids("<image>"), tok.pad_token_id or 0)
    dev, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    model = meta_model(config).to_empty(device=dev).to(torch_dtype)
    gen = torch.Generator(device=dev).manual_seed(seed)
    for name, p in model.named_parameters():
        if p.ndim == 1:
            p.fill_(1.0 if "norm" in name and name.endswith("weight") else 0.0)
        else:
            p.normal_(0.0, 0.02, generator=gen)
    _recompute_buffers(model)
    model.eval()
    return LoadedPolicy(model=model, processor=processor, base="random-idefics2-8b", device=dev, dtype=torch_dtype)

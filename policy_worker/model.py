"""Load the listener policy: one base model, its processor, and named LoRA adapters (peft).

Every system of a round (B-SUP, CONTROL, …) is an adapter on the same base, so one GPU serves
them all; adapters are added and removed at run time without reloading the base. Adapters may
target different modules (the paper's LoRA also covers the connector and the perceiver, the
project's text-only option does not), so one forward pass runs one adapter:
``decoding.decode_actions`` groups each batch by adapter (:meth:`LoadedPolicy.use_adapter`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger("multiref.policy")

IMAGE_SIZE = 224  # docs/method.md: 224 px, no image splitting (~64 image tokens per image)
END_OF_UTTERANCE = "<end_of_utterance>"

_DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Map a config string such as "bfloat16" to a torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[dtype.lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}") from None


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" means the first CUDA device when there is one, else the CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class LoadedPolicy:
    """A base model with its processor and named adapters, ready for `decoding.decode_actions`.

    `lock` serialises adapter switching and decoding: the active adapter is model-global state,
    so concurrent callers must not interleave.
    """

    model: Any  # Idefics2ForConditionalGeneration, or a peft PeftModel wrapping it
    processor: Any  # Idefics2Processor
    base: str
    device: torch.device
    dtype: torch.dtype
    adapters: dict[str, str] = field(default_factory=dict)  # name -> path it was loaded from
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def stop_token_id(self) -> int:
        """The token that ends an assistant turn in the chat template."""
        tid = self.tokenizer.convert_tokens_to_ids(END_OF_UTTERANCE)
        if tid is None or tid == self.tokenizer.unk_token_id:
            return int(self.tokenizer.eos_token_id)
        return int(tid)

    def adapter_names(self) -> list[str]:
        return sorted(self.adapters)

    def add_adapter(self, name: str, path: str | Path) -> None:
        """Load a LoRA adapter under `name` onto the shared base (hot swap: no base reload)."""
        from peft import PeftModel

        path = str(path)
        with self.lock:
            if not name or name in self.adapters:
                raise ValueError(f"adapter name {name!r} is empty or already loaded")
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(path, adapter_name=name, is_trainable=False)
            else:
                self.model = PeftModel.from_pretrained(
                    self.model, path, adapter_name=name, is_trainable=False
                )
            self.model.to(self.device)
            self.model.eval()
            self.adapters[name] = path
        logger.info("adapter %s loaded from %s", name, path)

    def remove_adapter(self, name: str) -> None:
        """Unload an adapter and free its weights; the base and other adapters stay."""
        from peft import PeftModel

        with self.lock:
            if name not in self.adapters:
                raise KeyError(f"no adapter {name!r}; loaded: {self.adapter_names()}")
            assert isinstance(self.model, PeftModel)
            del self.adapters[name]
            if not self.adapters:
                # Drop the LoRA wrappers altogether: the policy is the plain base again.
                self.model = self.model.unload()
                self.model.eval()
            else:
                if name in self.model.active_adapters:
                    self.model.set_adapter(next(iter(self.adapters)), inference_mode=True)
                self.model.delete_adapter(name)
        logger.info("adapter %s removed", name)

    @contextmanager
    def use_adapter(self, name: str | None) -> Iterator[None]:
        """Run the enclosed forward passes with adapter `name`, or the bare base for None."""
        with self.lock:
            if name is None:
                ctx = self.model.disable_adapter() if self.adapters else nullcontext()
                with ctx:
                    yield
                return
            if name not in self.adapters:
                raise KeyError(f"no adapter {name!r}; loaded: {self.adapter_names()}")
            if self.model.active_adapters != [name]:
                self.model.set_adapter(name, inference_mode=True)
            yield


def load_processor(base: str | Path, **kwargs: Any) -> Any:
    """The base's processor with images at 224 px (or the checkpoint's own size when smaller:
    a small stand-in trained on 32-px images) and no splitting, tokenizer padding left."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(base), do_image_splitting=False, **kwargs)
    size = processor.image_processor.size  # a SizeDict (fast/PIL processors) or a dict
    side = min(IMAGE_SIZE, int(size.get("longest_edge") or IMAGE_SIZE))
    processor.image_processor.size = type(size)(longest_edge=side, shortest_edge=side)
    processor.tokenizer.padding_side = "left"  # batched generation pads on the left
    return processor


def load_policy(
    base: str | Path,
    adapters: Mapping[str, str | Path] | None = None,
    dtype: str | torch.dtype = "bfloat16",
    device: str | torch.device = "auto",
    attn_implementation: str | None = None,
) -> LoadedPolicy:
    """Load base model (hub id or local folder), processor, and named adapters, in eval mode."""
    from transformers import AutoModelForImageTextToText

    torch_dtype = resolve_dtype(dtype)
    dev = resolve_device(device)
    kwargs: dict[str, Any] = {"dtype": torch_dtype}
    if dev.type != "cpu":
        kwargs["device_map"] = str(dev)  # load weights straight onto the accelerator
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    logger.info("loading base %s (%s) on %s", base, torch_dtype, dev)
    model = AutoModelForImageTextToText.from_pretrained(str(base), **kwargs)
    model.to(dev)
    model.eval()
    policy = LoadedPolicy(
        model=model, processor=load_processor(base), base=str(base), device=dev, dtype=torch_dtype
    )
    for name, path in (adapters or {}).items():
        policy.add_adapter(name, path)
    return policy

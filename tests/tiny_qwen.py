"""A tiny, randomly initialised Qwen2.5-VL built locally (no download) for the transformers-backend
tests: a word-level tokenizer over every word the prompts use, a chat template, Qwen's own image
processor, and a helper that saves all three as a checkpoint directory. Import it after
`pytest.importorskip("transformers")`."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import torch
import transformers

from pilot_experiments import synthvis
from pilot_experiments.backends import prompts
from pilot_experiments.backends.hf import HFBackend

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


IMAGE, VIDEO, START, END = 120, 121, 122, 123  # token ids of tiny_qwen's image / video / vision start / end


def tiny_qwen(seed: int):
    """A random Qwen2.5-VL small enough for CPU tests: 3 language layers, a 2-block vision tower."""
    cfg = transformers.Qwen2_5_VLConfig(
        text_config=dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                         rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=4,
                           spatial_merge_size=2, temporal_patch_size=2, window_size=16, fullatt_block_indexes=[1]),
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=START, vision_end_token_id=END)
    torch.manual_seed(seed)
    return transformers.Qwen2_5_VLForConditionalGeneration(cfg).eval()


def tiny_tokenizer():
    """Word level over every word the prompts use, lower-cased, with Qwen's special tokens."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    text = " ".join([prompts.CAPTION_INSTRUCTION, prompts.ONE_WORD, prompts.VIDEO_PREFACE, "user assistant", *synthvis.Tokenizer().words])
    words = sorted(set(re.findall(r"\w+|[^\w\s]+", text.lower().replace("<", " ").replace(">", " "))))
    backbone = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", *words])}, unk_token="[UNK]"))
    backbone.normalizer = normalizers.Lowercase()
    backbone.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backbone, unk_token="[UNK]", eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                               additional_special_tokens=SPECIALS)
    tok.chat_template = TEMPLATE
    return tok


def tiny_chat_model(tok, seed: int = 0):
    ids = dict(zip(SPECIALS, tok.convert_tokens_to_ids(SPECIALS)))
    cfg = transformers.Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=4096, bos_token_id=ids["<|endoftext|>"],
                         eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
                         rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0}),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=4,
                           spatial_merge_size=2, temporal_patch_size=2, window_size=16, fullatt_block_indexes=[1]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(seed)
    return transformers.Qwen2_5_VLForConditionalGeneration(cfg).eval()


def image_processor(**kwargs):
    """Qwen2-VL's image processor: `Qwen2VLImageProcessorPil` in current transformers, `Qwen2VLImageProcessor`
    in the 5.2 line kvpress pins."""
    return (getattr(transformers, "Qwen2VLImageProcessorPil", None) or transformers.Qwen2VLImageProcessor)(**kwargs)


def token_types(model, input_ids: torch.Tensor, image_token_id: int) -> dict:
    """`generate`'s `mm_token_type_ids` where the installed transformers takes it (5.23 on), else nothing."""
    if "mm_token_type_ids" in inspect.signature(model.model.get_rope_index).parameters:
        return {"mm_token_type_ids": (input_ids == image_token_id).int()}
    return {}


def tiny_image_processor():
    return image_processor(patch_size=4, merge_size=2, temporal_patch_size=2, min_pixels=64, max_pixels=1 << 20)


def tiny_chat_prompter() -> prompts.ChatPrompter:
    tok = tiny_tokenizer()
    return prompts.ChatPrompter(HFBackend(tiny_chat_model(tok), tok), tiny_image_processor(), label="tiny-qwen")


def save_tiny_checkpoint(path: Path, tok=None) -> Path:
    """The tiny model, `tok` (default: a fresh tiny tokenizer) and the image processor saved in `path`."""
    tok = tiny_tokenizer() if tok is None else tok
    tiny_chat_model(tok).save_pretrained(path)
    tok.save_pretrained(path)
    tiny_image_processor().save_pretrained(path)
    return path

"""Tiny vision-language models for tests: real configs and processors, the trained tiny tokenizer with
each model's image tokens added, random weights, image processors with small sizes. Built offline."""

from __future__ import annotations

from pathlib import Path

from tiny_models import SPECIALS, train_tokenizer

# One template for all three: a message's content is a string or a list of text and image parts.
PARTS_CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}IMAGE{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _llama_text(tokenizer, **extra) -> dict:
    return dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, **extra)


def _spread(model) -> None:
    """Random init barely looks at the image: spread the weights so the answer depends on it."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name and p.dim() > 1:
                p.add_(torch.randn_like(p) * 0.05)


def _save(model, processor, folder: Path, seed: int) -> Path:
    _spread(model)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_tiny_llava(folder: Path, seed: int = 0) -> Path:
    """LLaVA-1.5's shape: a CLIP vision tower (32 px, 8 px patches: 16 image tokens), a projector, a Llama."""
    import torch
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = train_tokenizer(specials=SPECIALS + ["<image>"])
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=32)
    config = LlavaConfig(vision_config=vision, text_config=LlamaConfig(**_llama_text(tokenizer)),
                         image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy="default", vision_feature_layer=-2,
                         tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    images = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=8,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=PARTS_CHATML.replace("IMAGE", "<image>\n"))
    return _save(model, processor, folder, seed)


def build_tiny_idefics3(folder: Path, seed: int = 0) -> Path:
    """Idefics3 (SmolVLM's architecture): a SigLIP tower on 32 px tiles, images split into tiles by size."""
    import torch
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
        Idefics3VisionConfig,
        LlamaConfig,
    )

    grid = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    tokenizer = train_tokenizer(specials=SPECIALS + ["<fake_token_around_image>", "<image>", "<end_of_utterance>",
                                                     "<global-img>"] + grid)
    vision = Idefics3VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                  image_size=32, patch_size=8)
    config = Idefics3Config(vision_config=vision, text_config=LlamaConfig(**_llama_text(tokenizer)), scale_factor=2,
                            image_token_id=tokenizer.convert_tokens_to_ids("<image>"), tie_word_embeddings=False,
                            pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    images = Idefics3ImageProcessorPil(size={"longest_edge": 64}, max_image_size={"longest_edge": 32},
                                       do_image_splitting=True)
    processor = Idefics3Processor(image_processor=images, tokenizer=tokenizer, image_seq_len=4,
                                  chat_template=PARTS_CHATML.replace("IMAGE", "<image>"))
    return _save(model, processor, folder, seed)


def build_tiny_qwen2_vl(folder: Path, seed: int = 0) -> Path:
    """Qwen2-VL: a ViT over 4 px patches merged 2x2, as many tokens as the image's size asks, M-RoPE."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil

    specials = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tokenizer = train_tokenizer(specials=SPECIALS + specials)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in specials}
    text = _llama_text(tokenizer, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                   "mrope_section": [2, 3, 3]})
    vision = dict(depth=1, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, patch_size=4,
                  spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
    config = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                           video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                           vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    sizes = dict(patch_size=4, merge_size=2, temporal_patch_size=2, min_pixels=8 * 8, max_pixels=48 * 48)
    # Written as a hub folder holds it: Qwen2VLProcessor itself cannot be built here, its video
    # processor needs torchvision (lmpipe.models.processors loads it for images without one).
    _spread(model)
    model.save_pretrained(folder)
    tokenizer.chat_template = PARTS_CHATML.replace("IMAGE", "<|vision_start|><|image_pad|><|vision_end|>")
    tokenizer.save_pretrained(folder)
    Qwen2VLImageProcessorPil(**sizes).save_pretrained(folder)
    (folder / "processor_config.json").write_text('{"processor_class": "Qwen2VLProcessor"}\n')
    return folder

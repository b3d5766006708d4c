"""Tiny real models for tests: real configs and tokenizers trained here, random weights."""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Pipes connect small tools; each tool does one job well.",
    "Language models read tokens and write tokens.",
    "def add(a, b):\n    return a + b",
    "Paris is the capital of France. Madrid is the capital of Spain.",
    "Hola mundo. Bonjour le monde. Hallo Welt.",
] * 20

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]


def train_tokenizer(vocab_size: int = 400, specials: list[str] = SPECIALS):
    """A byte-level BPE tokenizer trained on CORPUS, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<pad>",
                                   bos_token="<|endoftext|>")
    assert len(fast) > 256, f"tokenizer has only {len(fast)} tokens"
    return fast


def build_tiny_llama(folder: Path, chat: bool = True, seed: int = 0) -> Path:
    """A 2-layer Llama with a trained tokenizer and (optionally) a ChatML template, saved to folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = train_tokenizer()
    if chat:
        tokenizer.chat_template = CHATML
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# Vision models for lm-detect: real configs, tiny sizes, random weights, saved with their processors.
DETR_LABELS = ["cat", "dog", "remote", "couch"]
DETECTION_WORDS = ["a photo of a cat", "a dog on a couch", "remote control", "red square", "blue circle"] * 20


def build_tiny_detr(folder: Path, seed: int = 0) -> Path:
    """A DETR with a tiny ResNet backbone (no timm) and its PIL image processor, saved to folder."""
    import torch
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessorPil, ResNetConfig

    backbone = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                            out_features=["stage2"])
    config = DetrConfig(
        backbone_config=backbone, use_timm_backbone=False, num_queries=12, d_model=32,
        encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=32, decoder_ffn_dim=32,
        id2label=dict(enumerate(DETR_LABELS)), label2id={name: i for i, name in enumerate(DETR_LABELS)},
    )
    torch.manual_seed(seed)
    model = DetrForObjectDetection(config).eval()
    with torch.no_grad():  # default init collapses every query onto one box and score: spread them
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    model.save_pretrained(folder)
    DetrImageProcessorPil(size={"shortest_edge": 48, "longest_edge": 80}).save_pretrained(folder)
    return folder


def train_clip_tokenizer(vocab_size: int = 300):
    """A CLIP-style tokenizer: BOS and EOS wrap every text, EOS has the highest id (OWL-ViT pools there)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<|endoftext|>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS + DETECTION_WORDS, trainer)
    tok.add_special_tokens(["<|startoftext|>", "<|endoftext|>"])
    bos, eos = tok.token_to_id("<|startoftext|>"), tok.token_to_id("<|endoftext|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", bos), ("<|endoftext|>", eos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", unk_token="<|endoftext|>", model_max_length=16)
    assert len(fast) == vocab_size + 2, f"tokenizer has {len(fast)} tokens, expected {vocab_size + 2}"
    assert fast.eos_token_id == len(fast) - 1 and fast.bos_token_id > 0
    return fast


def build_tiny_owlvit(folder: Path, seed: int = 0) -> Path:
    """An OWL-ViT with tiny text and vision towers, a trained CLIP-style tokenizer and an OwlViTProcessor."""
    import torch
    from transformers import OwlViTConfig, OwlViTForObjectDetection, OwlViTImageProcessorPil, OwlViTProcessor

    tokenizer = train_clip_tokenizer()
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=16, pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=64, patch_size=16)
    config = OwlViTConfig(text_config=text, vision_config=vision, projection_dim=32)
    torch.manual_seed(seed)
    model = OwlViTForObjectDetection(config).eval()
    with torch.no_grad():  # spread the scores; keep boxes near their patch so they have a size
        for name, p in model.named_parameters():
            if name.startswith("box_head"):
                p.mul_(0.05)
            elif "logit_scale" not in name and "norm" not in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder)
    image_processor = OwlViTImageProcessorPil(size={"height": 64, "width": 64}, crop_size={"height": 64, "width": 64})
    OwlViTProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


# The families of lmpipe's fast path (lmpipe.models.fastpath.FAMILIES): config class and causal-LM class.
FAMILY_CLASSES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"), "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"), "mistral": ("MistralConfig", "MistralForCausalLM"),
    "granite": ("GraniteConfig", "GraniteForCausalLM"), "phi3": ("Phi3Config", "Phi3ForCausalLM"),
    "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM"), "gemma2": ("Gemma2Config", "Gemma2ForCausalLM"),
    "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM"),
}


def build_tiny_family(folder: Path, family: str, seed: int = 0, **config) -> Path:
    """A 2-layer model of `family` with the trained tokenizer, saved to folder. Every weight (biases
    and norms too, which start at 0 or 1) gets noise, so each family's pieces change the numbers and
    greedy tokens vary."""
    import torch
    import transformers

    config_class, model_class = (getattr(transformers, name) for name in FAMILY_CLASSES[family])
    tokenizer = train_tokenizer()
    sizes = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                 bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                 pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = model_class(config_class(**{**sizes, **config}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.25)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder

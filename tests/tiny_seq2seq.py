"""Tiny encoder-decoder models for tests: real configs, tokenizers trained here, random weights.

Each builder saves a model folder with a 64-token window (max_position_embeddings, or the
tokenizer's model_max_length for T5), so a few sentences already overflow it.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from tiny_models import CORPUS as BASE

TEXTS = [
    "A small model translates one sentence at a time.",
    "Summaries are shorter than the documents they come from.",
    "The river runs through the old town, past the market and the station.",
    "Every morning the baker opens the shop at six and sells fresh bread.",
    "Rain is expected tomorrow; take an umbrella when you go out.",
    "Numbers like 42, 1999 and 3.14 appear in many texts.",
    "El tiempo es bueno hoy. La casa es grande y blanca.",
    "Der Hund schläft im Garten. Die Katze sitzt auf dem Dach.",
]
CORPUS = BASE + TEXTS * 20
WINDOW = 64
SIZES = dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
             encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=WINDOW, init_std=0.3)


def _unigram(specials: list[str], vocab_size: int = 150):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token=specials[0])
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def _sentencepiece(folder: Path, vocab_size: int = 150) -> Path:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_writer=model, vocab_size=vocab_size,
                                   model_type="unigram", minloglevel=2)
    path = folder / "spm.model"
    path.write_bytes(model.getvalue())
    return path


def build_marian(folder: Path, targets: tuple[str, ...] = (), pair: tuple[str, str] = ("en", "es"),
                 seed: int = 0) -> Path:
    """opus-mt style: sentencepiece source/target models, a shared vocab.json, a known pair."""
    import sentencepiece as spm
    import torch
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    spm_path = _sentencepiece(folder)
    sp = spm.SentencePieceProcessor(model_file=str(spm_path))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    vocab = {p: i for i, p in enumerate(pieces)}
    for extra in [*(f">>{t}<<" for t in targets), "<pad>"]:
        vocab[extra] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = MarianTokenizer(str(spm_path), str(spm_path), str(folder / "vocab.json"),
                                source_lang=pair[0], target_lang=pair[1], model_max_length=WINDOW)
    assert len(tokenizer) == len(vocab) == 150 + len(targets) + 1, len(tokenizer)
    config = MarianConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                          eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id,
                          **SIZES)
    torch.manual_seed(seed)
    MarianMTModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "spm.model").unlink()
    return folder


def build_mbart50(folder: Path, seed: int = 0) -> Path:
    """mBART-50: the model's own tokenizer class over a Unigram vocabulary trained here."""
    import torch
    from transformers import MBart50Tokenizer, MBartConfig, MBartForConditionalGeneration

    trained = _unigram(["<unk>", "<s>", "</s>"])
    vocab = [(piece, score) for piece, score in json.loads(trained.to_str())["model"]["vocab"]]
    tokenizer = MBart50Tokenizer(vocab=vocab, src_lang="en_XX", tgt_lang="es_XX")
    # <s> <pad> </s> <unk>, the trained pieces after its own three specials, 52 language codes, <mask>
    codes = tokenizer.convert_tokens_to_ids(["en_XX", "es_XX", "de_DE", "fr_XX"])
    assert len(set(codes)) == 4 and tokenizer.unk_token_id not in codes
    assert len(tokenizer) == 198, len(tokenizer)  # 4 specials, trained pieces, 52 language codes, <mask>
    tokenizer.model_max_length = WINDOW
    config = MBartConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=0,
                         eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.eos_token_id,
                         forced_eos_token_id=tokenizer.eos_token_id, **SIZES)
    torch.manual_seed(seed)
    MBartForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_t5(folder: Path, seed: int = 0) -> Path:
    """T5: relative positions (no window in the config: the tokenizer's model_max_length is it)."""
    import torch
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    trained = _unigram(["<pad>", "</s>", "<unk>"])
    trained.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=trained, pad_token="<pad>", eos_token="</s>",
                                        unk_token="<unk>", model_max_length=WINDOW)
    assert len(tokenizer) == trained.get_vocab_size() == 144, len(tokenizer)
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1,
                      num_heads=4, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                      initializer_factor=8.0)
    torch.manual_seed(seed)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_bart(folder: Path, seed: int = 0) -> Path:
    """BART: byte-level BPE with <s> ... </s> around every text."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import BartConfig, BartForConditionalGeneration, PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                        unk_token="<unk>", mask_token="<mask>", model_max_length=WINDOW)
    assert len(tokenizer) == 400, len(tokenizer)
    config = BartConfig(vocab_size=len(tokenizer), pad_token_id=1, bos_token_id=0, eos_token_id=2,
                        decoder_start_token_id=2, **SIZES)
    torch.manual_seed(seed)
    BartForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


M2M_SIZES = dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                 encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=WINDOW, init_std=0.3)


def build_nllb(folder: Path, seed: int = 4) -> Path:
    """NLLB: an M2M100 model with NLLB's own tokenizer class over a BPE vocabulary trained here.

    Seed 4: with the default seed this random model says nothing for the test sentences."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import M2M100Config, M2M100ForConditionalGeneration, NllbTokenizer

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<s>", "<pad>", "</s>", "<unk>"])
    tok.train_from_iterator(CORPUS, trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tokenizer = NllbTokenizer(vocab=model["vocab"], merges=merges, src_lang="eng_Latn", tgt_lang="spa_Latn")
    codes = tokenizer.convert_tokens_to_ids(["eng_Latn", "spa_Latn", "deu_Latn"])
    assert len(set(codes)) == 3 and tokenizer.unk_token_id not in codes
    assert len(tokenizer) == 200 + 202 + 1, len(tokenizer)  # trained BPE, 202 language codes, <mask>
    tokenizer.model_max_length = WINDOW
    config = M2M100Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=0,
                          eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.eos_token_id,
                          **M2M_SIZES)
    torch.manual_seed(seed)
    M2M100ForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_m2m100(folder: Path, seed: int = 0) -> Path:
    """M2M100: sentencepiece plus a vocab.json; the tokenizer adds `__xx__` for 100 languages."""
    import sentencepiece as spm
    import torch
    from transformers import M2M100Config, M2M100ForConditionalGeneration, M2M100Tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    spm_path = _sentencepiece(folder)
    sp = spm.SentencePieceProcessor(model_file=str(spm_path))
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for i in range(sp.get_piece_size()):
        vocab.setdefault(sp.id_to_piece(i), len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = M2M100Tokenizer(str(folder / "vocab.json"), str(spm_path), src_lang="en", tgt_lang="es")
    assert tokenizer.get_lang_id("es") != tokenizer.get_lang_id("en")
    size = len(tokenizer)
    assert size == len(vocab) == 151, size  # the pieces; 100 language ids and 8 made-up words follow them
    assert tokenizer.get_lang_id("af") == size
    assert tokenizer.convert_tokens_to_ids("__es__") == tokenizer.get_lang_id("es")
    tokenizer.model_max_length = WINDOW
    config = M2M100Config(vocab_size=size + 100 + 8, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                          decoder_start_token_id=2, **M2M_SIZES)
    torch.manual_seed(seed)
    M2M100ForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "spm.model").unlink()
    return folder

#!/usr/bin/env python3
"""Write real-size, random-weight captioning, zero-shot classification and chat vision-language
models for speed benchmarks.

Each model has the exact architecture and Hugging Face file layout of a Hub checkpoint, but
random weights (speed does not depend on the weights), so nothing is downloaded from the Hub:

* ``blip-base/``  -- Salesforce/blip-image-captioning-base  (ViT-B/16 at 384, ~247M params, ~1 GB)
* ``blip-large/`` -- Salesforce/blip-image-captioning-large (ViT-L/16 at 384, ~470M params, ~1.9 GB)
* ``clip-b32/``   -- openai/clip-vit-base-patch32 (``CLIPModel``: ViT-B/32 at 224 + 12-layer 512-wide
  text transformer, 77 positions, vocab 49408, projection 512, quick_gelu; ~151M params, ~0.6 GB)
* ``siglip-b16/`` -- google/siglip-base-patch16-224 (``SiglipModel``: ViT-B/16 at 224 + 12-layer
  768-wide text transformer, 64 positions, vocab 32000; ~203M params, ~0.8 GB)
* ``vit-gpt2/``   -- nlpconnect/vit-gpt2-image-captioning (``VisionEncoderDecoderModel``: ViT-B/16 at
  224 encoder, ``ViTConfig`` defaults, + GPT-2 base decoder, ``GPT2Config`` defaults with
  cross-attention: 12 layers, 768 wide, 1024 positions, vocab 50257; ~239M params, ~1 GB)
* ``qwen3-vl-2b/`` -- Qwen/Qwen3-VL-2B-Instruct (``Qwen3VLForConditionalGeneration``: a 24-block
  1024-wide ViT, patch 16, 2x2 merge, DeepStack at blocks 5/11/17, + a 28-layer 2048-wide Qwen3
  decoder, GQA 16/8 heads of 128, interleaved M-RoPE [24, 20, 20], tied embeddings, vocab
  151936; ~2128M params, ~4.3 GB in bfloat16)
* ``florence2-base/``, ``florence2-large/`` -- florence-community/Florence-2-base / -large
  (``Florence2ForConditionalGeneration`` in transformers 5's layout: DaViT [128, 256, 512, 1024]
  / [256, 512, 1024, 2048] wide, depths [1, 1, 9, 1], window 12, at 768x768 (577 image tokens),
  + BART 6+6 layers 768 wide / 12+12 layers 1024 wide, vocab 51289 + ``<image>`` padded to 51328;
  ~232M / ~771M params; float32; the generation config of the model cards: 3 beams, no-repeat
  3-grams, forced bos/eos, early stopping)

Files, all written by ``save_pretrained``: ``config.json``, ``model.safetensors`` (float32, as on
the Hub), ``tokenizer.json``, ``tokenizer_config.json``, ``processor_config.json``, a stand-alone
``preprocessor_config.json`` like the Hub checkpoints have, and for BLIP ``generation_config.json``.
(vit-gpt2 differs, see below.)

BLIP: the tokenizer is a BERT WordPiece tokenizer with a synthetic vocabulary of exactly 30522
entries laid out like ``bert-base-uncased`` ([PAD]=0, [unused0..98]=1..99, [UNK]=100,
[CLS]=101, [SEP]=102, [MASK]=103, more [unusedN] up to 998, then words "w999", "w1000", ...)
plus BLIP's added bos token ``[DEC]`` = 30522, as in BLIP's own ``init_tokenizer``.
The image processor is BLIP's: 384x384, bicubic (resample 3), rescale 1/255, CLIP mean/std.

CLIP / SigLIP: the tokenizers are built offline as in tests/fixtures/generate_clip.py (whose
``bytes_to_unicode`` / ``learn_bpe`` / ``punctuation_regex`` are imported from there), with the
words of the benchmark prompts ("a photo of a {label}." over benches/make_labels.py's words) as the
corpus, so that every prompt word is ONE token, as in the real vocabularies (prompt lengths, and
so text-encoder cost, are realistic: 9-10 tokens for CLIP). The vocabularies are padded with
unreachable filler entries to the real sizes, so the special ids are the real ones:

* CLIP: ``CLIPTokenizer`` (byte-level BPE with ``</w>``; openai's layout: 256 byte symbols, the
  same with ``</w>``, merges, fillers, ``<|startoftext|>`` = 49406, ``<|endoftext|>`` = 49407,
  which also pads), model_max_length 77. ``text_config`` has the Hub config's legacy ids
  bos 0 / eos 2 / pad 1, so transformers pools at argmax(input_ids) = the first <|endoftext|>.
  Image processor: shortest edge 224, center crop 224, bicubic (resample 3), CLIP mean/std.
* SigLIP: a Unigram ``tokenizer.json`` mirroring the SentencePiece ``SiglipTokenizer`` (lowercase,
  punctuation removed, whitespace collapsed, ``Metaspace``, ``</s>`` appended and used as pad;
  ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2; 32000 pieces), model_max_length 64 and
  ``model_input_names ["input_ids"]`` as on the Hub (no attention_mask; text is padded to
  max_length 64). Image processor: 224x224, bilinear (resample 2), rescale 1/255, mean/std 0.5.
* ``logit_scale`` (and SigLIP's ``logit_bias``) are set to the trained checkpoints' values
  (CLIP 4.6052 = ln 100; SigLIP 4.7710 / -12.9324); the other weights are transformers' init.

vit-gpt2: the layout of nlpconnect/vit-gpt2-image-captioning: ``config.json`` (composite, with
``encoder`` / ``decoder`` sub-configs and decoder_start / eos / pad = 50256 at the top level),
``generation_config.json`` (decoder_start = bos = eos = pad = 50256, max_length 16),
``model.safetensors`` (the decoder's lm_head is tied to ``wte`` and not stored), ``tokenizer.json`` +
``tokenizer_config.json`` (``GPT2Tokenizer``), no processor_config.json, and nlpconnect's
``preprocessor_config.json`` verbatim (legacy ViTFeatureExtractor layout: ``"size": 224``,
resample 2 = bilinear, mean/std 0.5; transformers resolves it to ViTImageProcessor 224x224 with
rescale 1/255). The tokenizer is a GPT-2 byte-level BPE whose merges are learned offline by
tests/fixtures/generate_ved.py's ``learn_gpt2_bpe`` (imported from there), laid out like
openai-community/gpt2's ``encoder.json``: 256 byte symbols, the merged tokens, unreachable fillers
``Ġw<id>`` (no merge makes them; they decode to " w<id>", word-like text) up to 50256 entries, then
``<|endoftext|>`` = 50256. Weights: transformers' init (random captions of fillers; speed does not
depend on the words).

qwen3-vl-2b: the config is the Hub's config.json (transformers 5 writes its ``rope_scaling`` and
``rope_theta`` as ``rope_parameters``); ``model.safetensors`` is written in **bfloat16**, the Hub
checkpoint's dtype (the model is built in bfloat16 with transformers' init: normal std 0.02, norms
1; the tied lm_head is not stored). ``preprocessor_config.json`` and ``generation_config.json`` are
the Hub's, verbatim (the image processor type names the Fast class, which needs torchvision;
benches/transformers_chat.py builds its PIL twin from the same file). The tokenizer is Qwen2's
layout built offline with transformers' ``Qwen2Tokenizer`` (NFC, Qwen2's split regex, byte-level
BPE): 151643 regular entries -- the 256 byte symbols, merges learned by generate_ved.py's
``learn_gpt2_bpe`` on its captions plus ChatML role names and the benchmark prompts (so that
"Describe this image in one sentence." is seven tokens, as with the real vocabulary), unreachable
fillers ``Ġw<id>`` -- then the added tokens at their real ids: the special ``<|endoftext|>`` 151643
(pad), ``<|im_start|>`` 151644, ``<|im_end|>`` 151645 (eos), ..., ``<|vision_start|>`` 151652,
``<|vision_end|>`` 151653, ``<|vision_pad|>`` 151654, ``<|image_pad|>`` 151655, ``<|video_pad|>``
151656, and Qwen3's non-special ``<tool_call>`` 151657 ... ``<think>`` 151667, ``</think>`` 151668.
The chat template (``chat_template.jinja``, and the same text as ``tokenizer_config.json``'s
``chat_template``) is Qwen3-VL's ChatML without its tool-calling branches, see
``QWEN3_VL_CHAT_TEMPLATE``. Peak memory while writing: ~5.6 GB.

How to run (from the repository root; the output directory is not meant to be committed):

    venv/bin/python benches/make_models.py                        # bench-models/blip-base
    venv/bin/python benches/make_models.py --which blip-base,blip-large --out bench-models
    venv/bin/python benches/make_models.py --which clip-b32,siglip-b16
    venv/bin/python benches/make_models.py --which vit-gpt2
    venv/bin/python benches/make_models.py --which qwen3-vl-2b       # under a minute, 4.3 GB

Existing model directories are left alone unless ``--force`` is given. Fixed seed (``--seed``,
default 0): the same torch/transformers versions write the same weights.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import (
    BertTokenizer,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipImageProcessorPil,
    BlipProcessor,
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPProcessor,
    CLIPTokenizer,
    GenerationConfig,
    GPT2Config,
    GPT2Tokenizer,
    PreTrainedTokenizerFast,
    Qwen2Tokenizer,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    SiglipConfig,
    SiglipImageProcessorPil,
    SiglipModel,
    SiglipProcessor,
    VisionEncoderDecoderConfig,
    VisionEncoderDecoderModel,
    ViTConfig,
)

BENCHES = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHES))
sys.path.insert(0, str(BENCHES.parent / "tests" / "fixtures"))
import make_labels  # noqa: E402  (benches/make_labels.py: the label words)
from generate_clip import bytes_to_unicode, learn_bpe, punctuation_regex  # noqa: E402  (the fixture generator)

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
BERT_VOCAB_SIZE = 30522  # bert-base-uncased, which BLIP's tokenizer extends with [DEC]

# The text decoder is the same BERT-base-sized decoder in both checkpoints; only the
# vision tower (and so the decoder's cross-attention input width) differs.
TEXT = dict(
    vocab_size=30524,  # as in Salesforce's config.json (the tokenizer has 30523 tokens)
    hidden_size=768,
    encoder_hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=512,
    layer_norm_eps=1e-12,
    hidden_act="gelu",
    projection_dim=768,
    bos_token_id=30522,  # [DEC]
    sep_token_id=102,  # [SEP]: generation stops here
    pad_token_id=0,  # [PAD]
)
VISION_BASE = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    image_size=384,
    patch_size=16,
    layer_norm_eps=1e-5,
    hidden_act="gelu",
    projection_dim=512,
)
MODELS = {
    "blip-base": (TEXT, VISION_BASE),
    "blip-large": (
        {**TEXT, "encoder_hidden_size": 1024},
        {**VISION_BASE, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16},
    ),
}


def vocab() -> list[str]:
    """30522 WordPiece entries at bert-base-uncased's special-token positions."""
    v = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    v += [f"[unused{i}]" for i in range(99, 994)]  # ids 104..998, as in BERT
    v += [f"w{i}" for i in range(len(v), BERT_VOCAB_SIZE)]
    assert len(v) == BERT_VOCAB_SIZE and v[100:104] == ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    return v


def build_processor(workdir: Path) -> BlipProcessor:
    vocab_path = workdir / "vocab.txt"
    vocab_path.write_text("".join(w + "\n" for w in vocab()), encoding="utf-8")
    tokenizer = BertTokenizer(vocab=str(vocab_path), do_lower_case=True, model_max_length=512)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})  # BLIP's init_tokenizer
    image_processor = BlipImageProcessorPil(
        do_resize=True,
        size={"height": 384, "width": 384},
        resample=3,  # PIL.Image.BICUBIC
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        do_convert_rgb=True,
    )
    return BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)


def make_blip(name: str, out: Path, seed: int) -> None:
    text, vision = MODELS[name]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as td:
        processor = build_processor(Path(td))
        tok = processor.tokenizer
        assert len(tok) == BERT_VOCAB_SIZE + 1
        assert tok.convert_tokens_to_ids("[DEC]") == text["bos_token_id"]
        assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (0, 100, 101, 102, 103)
        out.mkdir(parents=True, exist_ok=True)
        processor.save_pretrained(out)
        processor.image_processor.save_pretrained(out)  # the classic preprocessor_config.json
    config = BlipConfig(text_config=text, vision_config=vision, projection_dim=512, image_text_hidden_size=256)
    config.architectures = ["BlipForConditionalGeneration"]
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config).eval()
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out)
    report(name, out, n_params, t0)


def report(name: str, out: Path, n_params: int, t0: float) -> None:
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    print(f"{name}: {n_params / 1e6:.1f}M parameters, {size / 1e6:.0f} MB in {out} "
          f"({time.perf_counter() - t0:.0f} s): {', '.join(sorted(p.name for p in out.iterdir()))}", flush=True)


# --------------------------------------------------------------------------------------
# Zero-shot classification: CLIP ViT-B/32 and SigLIP base/16
# --------------------------------------------------------------------------------------
TEMPLATE = "a photo of a {}."  # the single template of bench.sh's zero-shot cases


def prompt_words() -> list[str]:
    """The words (as CLIP's pre-tokenizer splits them) of every benchmark prompt."""
    return sorted(set(TEMPLATE.format("").replace(".", " ").split()) | set(make_labels.words()) | {"."})


CLIP_VOCAB_SIZE = 49408
CLIP_MAX_LENGTH = 77
CLIP_TEXT = dict(
    vocab_size=CLIP_VOCAB_SIZE,
    hidden_size=512,
    intermediate_size=2048,
    num_hidden_layers=12,
    num_attention_heads=8,
    max_position_embeddings=CLIP_MAX_LENGTH,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    projection_dim=512,
    # As in openai/clip-vit-base-patch32's config.json (legacy ids): eos_token_id 2 makes
    # transformers pool at argmax(input_ids), i.e. the first <|endoftext|> (the largest id).
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
)
CLIP_VISION = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    image_size=224,
    patch_size=32,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    projection_dim=512,
)
CLIP_LOGIT_SCALE = 4.6052  # trained openai checkpoints: ln(100)


def build_clip_tokenizer() -> CLIPTokenizer:
    # Each word twice: learn_bpe merges every pair seen at least twice, so each word ends up one token.
    merges = learn_bpe(prompt_words() * 2, 10_000)
    base = list(bytes_to_unicode().values())
    vocab_list = base + [v + "</w>" for v in base]
    seen = set(vocab_list)
    for a, b in merges:
        if a + b not in seen:
            seen.add(a + b)
            vocab_list.append(a + b)
    # Unreachable fillers (no merge produces them) up to the real size, so that
    # <|startoftext|> / <|endoftext|> get openai's ids 49406 / 49407.
    vocab_list += [f"<|unused{i}|>" for i in range(CLIP_VOCAB_SIZE - 2 - len(vocab_list))]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab_list) == len(set(vocab_list)) == CLIP_VOCAB_SIZE
    vocab = {t: i for i, t in enumerate(vocab_list)}
    tok = CLIPTokenizer(vocab=vocab, merges=[tuple(m) for m in merges], model_max_length=CLIP_MAX_LENGTH)
    assert (tok.convert_tokens_to_ids("<|startoftext|>"), tok.convert_tokens_to_ids("<|endoftext|>")) == (49406, 49407)
    assert tok.pad_token == "<|endoftext|>", tok.pad_token
    for w in prompt_words():
        ids = tok(w, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, (w, tok.convert_ids_to_tokens(ids))
    return tok


def make_clip(name: str, out: Path, seed: int) -> None:
    t0 = time.perf_counter()
    tok = build_clip_tokenizer()
    image_processor = CLIPImageProcessorPil(
        do_resize=True,
        size={"shortest_edge": 224},
        resample=3,  # PIL.Image.BICUBIC
        do_center_crop=True,
        crop_size={"height": 224, "width": 224},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        do_convert_rgb=True,
    )
    out.mkdir(parents=True, exist_ok=True)
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tok)
    processor.save_pretrained(out)
    processor.image_processor.save_pretrained(out)  # the classic preprocessor_config.json
    config = CLIPConfig(text_config=CLIP_TEXT, vision_config=CLIP_VISION, projection_dim=512)
    config.architectures = ["CLIPModel"]
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    with torch.no_grad():
        model.logit_scale.fill_(CLIP_LOGIT_SCALE)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out)
    report(name, out, n_params, t0)


SIGLIP_VOCAB_SIZE = 32000
SIGLIP_MAX_LENGTH = 64
SIGLIP_TEXT = dict(
    vocab_size=SIGLIP_VOCAB_SIZE,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=SIGLIP_MAX_LENGTH,
    hidden_act="gelu_pytorch_tanh",
    layer_norm_eps=1e-6,
    projection_size=768,
    pad_token_id=1,  # </s>
    eos_token_id=1,
    bos_token_id=None,
)
SIGLIP_VISION = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    image_size=224,
    patch_size=16,
    hidden_act="gelu_pytorch_tanh",
    layer_norm_eps=1e-6,
)
SIGLIP_LOGIT_SCALE = 4.7710  # google/siglip-base-patch16-224: exp ~118
SIGLIP_LOGIT_BIAS = -12.9324


def build_siglip_tokenizer() -> PreTrainedTokenizerFast:
    """A Unigram tokenizer.json like tests/fixtures/generate_clip.py's, with a piece per prompt word."""
    import string

    import tokenizers
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -6.0)]
    pieces += [("▁" + w, -8.0) for w in prompt_words() if w.isalpha()]
    pieces += [(c, -12.0) for c in string.ascii_lowercase + string.digits]
    pieces += [("▁" + c, -11.0) for c in string.ascii_lowercase if "▁" + c not in {p for p, _ in pieces}]
    # Unreachable fillers up to the real size: "<" and ">" are removed by the normalizer.
    pieces += [(f"<unused{i}>", -100.0) for i in range(SIGLIP_VOCAB_SIZE - len(pieces))]
    assert len(pieces) == len({p for p, _ in pieces}) == SIGLIP_VOCAB_SIZE
    tok = Tokenizer(Unigram(pieces, unk_id=2, byte_fallback=False))
    # SiglipTokenizer.canonicalize_text: lower(), remove string.punctuation, collapse \s+, strip.
    tok.normalizer = normalizers.Sequence([
        normalizers.Lowercase(),
        normalizers.Replace(Regex(punctuation_regex()), ""),
        normalizers.Replace(Regex(r"\s+"), " "),
        normalizers.Strip(left=True, right=True),
    ])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.post_processor = processors.TemplateProcessing(
        single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"], special_tokens=[("</s>", 1)]
    )
    tok.add_special_tokens([
        tokenizers.AddedToken("<pad>", normalized=False, special=True),
        tokenizers.AddedToken("</s>", normalized=False, special=True),
        tokenizers.AddedToken("<unk>", normalized=False, special=True),
    ])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="</s>",  # SiglipTokenizer's default: pads with </s> (id 1)
        model_max_length=SIGLIP_MAX_LENGTH,
        model_input_names=["input_ids"],  # as google/siglip-* tokenizer_config.json: no attention_mask
    )
    for w in prompt_words():
        if w.isalpha():
            ids = fast(w, add_special_tokens=False)["input_ids"]
            assert len(ids) == 1, (w, fast.convert_ids_to_tokens(ids))
    return fast


def make_siglip(name: str, out: Path, seed: int) -> None:
    t0 = time.perf_counter()
    tok = build_siglip_tokenizer()
    image_processor = SiglipImageProcessorPil(
        do_resize=True,
        size={"height": 224, "width": 224},
        resample=2,  # PIL.Image.BILINEAR
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_convert_rgb=True,
    )
    out.mkdir(parents=True, exist_ok=True)
    processor = SiglipProcessor(image_processor=image_processor, tokenizer=tok)
    processor.save_pretrained(out)
    processor.image_processor.save_pretrained(out)  # the classic preprocessor_config.json
    config = SiglipConfig(text_config=SIGLIP_TEXT, vision_config=SIGLIP_VISION)
    config.architectures = ["SiglipModel"]
    torch.manual_seed(seed)
    model = SiglipModel(config).eval()
    with torch.no_grad():
        model.logit_scale.fill_(SIGLIP_LOGIT_SCALE)
        model.logit_bias.fill_(SIGLIP_LOGIT_BIAS)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out)
    report(name, out, n_params, t0)


# --------------------------------------------------------------------------------------
# Captioning with a VisionEncoderDecoderModel: nlpconnect/vit-gpt2-image-captioning
# --------------------------------------------------------------------------------------
GPT2_VOCAB_SIZE = 50257
GPT2_EOT = GPT2_VOCAB_SIZE - 1  # <|endoftext|>: bos = eos = pad = unk = decoder_start
VIT_GPT2_MAX_LENGTH = 16  # nlpconnect's README: generate(pixel_values, max_length=16, num_beams=4)
# nlpconnect/vit-gpt2-image-captioning's preprocessor_config.json, verbatim.
VIT_GPT2_PREPROCESSOR = {
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "ViTFeatureExtractor",
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "resample": 2,
    "size": 224,
}


def build_gpt2_tokenizer() -> GPT2Tokenizer:
    """A GPT-2 byte-level BPE with exactly 50257 entries and <|endoftext|> = 50256."""
    # The fixture generator (tests/fixtures/generate_ved.py): its small caption corpus and
    # deterministic BPE learner. Imported here only, so the other models do not depend on it.
    from generate_ved import bytes_to_unicode as gpt2_bytes_to_unicode, learn_gpt2_bpe

    merges = learn_gpt2_bpe(10_000)  # every merge the corpus supports (a few hundred)
    vocab_list = list(gpt2_bytes_to_unicode().values())
    seen = set(vocab_list)
    for a, b in merges:
        if a + b not in seen:
            seen.add(a + b)
            vocab_list.append(a + b)
    # Fillers up to the real size: "Ġw<id>" mixes letters and digits, which GPT-2's pre-tokenizer
    # always splits apart, so the tokenizer never produces them; they decode to " w<id>".
    vocab_list += [f"Ġw{i}" for i in range(len(vocab_list), GPT2_EOT)]
    vocab_list.append("<|endoftext|>")
    assert len(vocab_list) == len(set(vocab_list)) == GPT2_VOCAB_SIZE
    tok = GPT2Tokenizer(
        vocab={t: i for i, t in enumerate(vocab_list)},
        merges=[tuple(m) for m in merges],
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=1024,
    )
    assert len(tok) == GPT2_VOCAB_SIZE and tok.convert_tokens_to_ids("<|endoftext|>") == GPT2_EOT
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (GPT2_EOT,) * 3
    assert tok.decode([GPT2_EOT - 1, GPT2_EOT - 2]) == f" w{GPT2_EOT - 1} w{GPT2_EOT - 2}"
    assert max(tok("a horse standing in a field.")["input_ids"]) < GPT2_EOT - 40_000
    return tok


def make_vit_gpt2(name: str, out: Path, seed: int) -> None:
    t0 = time.perf_counter()
    tok = build_gpt2_tokenizer()
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(out)
    with open(out / "preprocessor_config.json", "w", encoding="utf-8") as f:
        json.dump(VIT_GPT2_PREPROCESSOR, f, indent=2, sort_keys=True)
        f.write("\n")
    encoder = ViTConfig()  # hidden 768, 12 layers, 12 heads, patch 16, image 224: as nlpconnect's
    decoder = GPT2Config(  # n_embd 768, 12 layers, 12 heads, n_positions 1024, vocab 50257
        add_cross_attention=True,
        is_decoder=True,
        bos_token_id=GPT2_EOT,
        eos_token_id=GPT2_EOT,
        pad_token_id=GPT2_EOT,
    )
    assert (encoder.hidden_size, encoder.num_hidden_layers, encoder.patch_size, encoder.image_size) == (768, 12, 16, 224)
    assert (decoder.n_embd, decoder.n_layer, decoder.n_head, decoder.vocab_size) == (768, 12, 12, GPT2_VOCAB_SIZE)
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    # nlpconnect's config.json has these at the top level too.
    config.decoder_start_token_id = GPT2_EOT
    config.bos_token_id = GPT2_EOT
    config.eos_token_id = GPT2_EOT
    config.pad_token_id = GPT2_EOT
    config.architectures = ["VisionEncoderDecoderModel"]
    torch.manual_seed(seed)
    model = VisionEncoderDecoderModel(config).eval()
    gc = model.generation_config
    gc.decoder_start_token_id = GPT2_EOT
    gc.bos_token_id = GPT2_EOT
    gc.eos_token_id = GPT2_EOT
    gc.pad_token_id = GPT2_EOT
    gc.max_length = VIT_GPT2_MAX_LENGTH
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out)
    report(name, out, n_params, t0)


# --------------------------------------------------------------------------------------
# Chat / captioning with a vision-language model: Qwen/Qwen3-VL-2B-Instruct
# --------------------------------------------------------------------------------------
QWEN_VOCAB_REGULAR = 151643  # byte-level BPE entries before the first added token
# Qwen2's added special tokens at their real ids, in id order from 151643 ...
QWEN_SPECIAL = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]
# ... then Qwen3's non-special added tokens, 151657..151668.
QWEN_ADDED = [
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
    "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>", "<think>", "</think>",
]
QWEN_ENDOFTEXT, QWEN_IM_END = 151643, 151645
QWEN_IMAGE_PAD, QWEN_VIDEO_PAD, QWEN_VISION_START, QWEN_VISION_END = 151655, 151656, 151652, 151653
QWEN3_VL_MAX_LENGTH = 262144  # max_position_embeddings, and the tokenizer's model_max_length
# The text the BPE merges are learned from besides generate_ved.py's captions: ChatML role names
# and the words of the benchmark prompts, twice (learn_gpt2_bpe only merges pairs seen twice), so
# that they are one token each as in the real vocabulary ("Describe", " this", " image", ...).
QWEN_CHAT_CORPUS = (
    "system\nYou are a helpful assistant.\nuser\nDescribe this image in one sentence.\nassistant\n"
    "What is in this image? Describe this image. Write a short caption for this photo.\n"
) * 2
# Qwen/Qwen3-VL-2B-Instruct's config.json, in transformers 5's names (rope_parameters holds the
# Hub's rope_scaling and rope_theta).
QWEN3_VL_2B_TEXT = dict(
    hidden_size=2048,
    intermediate_size=6144,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    vocab_size=151936,
    max_position_embeddings=QWEN3_VL_MAX_LENGTH,
    rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": [24, 20, 20],
                     "mrope_interleaved": True},
    tie_word_embeddings=True,
    hidden_act="silu",
    attention_bias=False,
    bos_token_id=QWEN_ENDOFTEXT,
    eos_token_id=QWEN_IM_END,
)
QWEN3_VL_2B_VISION = dict(
    depth=24,
    hidden_size=1024,
    intermediate_size=4096,
    num_heads=16,
    patch_size=16,
    spatial_merge_size=2,
    temporal_patch_size=2,
    in_channels=3,
    out_hidden_size=2048,
    num_position_embeddings=2304,
    deepstack_visual_indexes=[5, 11, 17],
    hidden_act="gelu_pytorch_tanh",
)
# Qwen/Qwen3-VL-2B-Instruct's preprocessor_config.json and generation_config.json, verbatim.
QWEN3_VL_PREPROCESSOR = {
    "image_processor_type": "Qwen2VLImageProcessorFast",
    "processor_class": "Qwen3VLProcessor",
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "size": {"longest_edge": 16777216, "shortest_edge": 65536},
    "do_rescale": True,
    "rescale_factor": 0.00392156862745098,
    "do_normalize": True,
    "do_resize": True,
    "resample": 3,
    "do_convert_rgb": True,
}
QWEN3_VL_GENERATION = dict(
    bos_token_id=QWEN_ENDOFTEXT,
    pad_token_id=QWEN_ENDOFTEXT,
    do_sample=True,
    eos_token_id=[QWEN_IM_END, QWEN_ENDOFTEXT],
    top_k=20,
    top_p=0.8,
    repetition_penalty=1.0,
    temperature=0.7,
)
# Qwen3-VL-Instruct's ChatML template without its tool-calling branches: messages of any role in
# order (system, user, assistant); content is a string or a list of parts ({"type": "image"}, {"type": "video"},
# {"type": "text", "text": ...}; text parts are not stripped); an image renders
# <|vision_start|><|image_pad|><|vision_end|> ("Picture N: " before it with add_vision_id); each
# message <|im_start|>ROLE\n...<|im_end|>\n; add_generation_prompt appends <|im_start|>assistant\n.
QWEN3_VL_CHAT_TEMPLATE = """{%- set image_count = namespace(value=0) %}
{%- set video_count = namespace(value=0) %}
{%- for message in messages %}
    {{- '<|im_start|>' + message.role + '\\n' }}
    {%- if message.content is string %}
        {{- message.content }}
    {%- else %}
        {%- for content in message.content %}
            {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}
                {%- set image_count.value = image_count.value + 1 %}
                {%- if add_vision_id %}
                    {{- 'Picture ' ~ image_count.value ~ ': ' }}
                {%- endif %}
                {{- '<|vision_start|><|image_pad|><|vision_end|>' }}
            {%- elif content.type == 'video' or 'video' in content %}
                {%- set video_count.value = video_count.value + 1 %}
                {%- if add_vision_id %}
                    {{- 'Video ' ~ video_count.value ~ ': ' }}
                {%- endif %}
                {{- '<|vision_start|><|video_pad|><|vision_end|>' }}
            {%- elif 'text' in content %}
                {{- content.text }}
            {%- endif %}
        {%- endfor %}
    {%- endif %}
    {{- '<|im_end|>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""


def build_qwen_tokenizer() -> Qwen2Tokenizer:
    """Qwen2's byte-level BPE layout: 151643 regular entries, then the added tokens at their real ids."""
    from unittest import mock

    import generate_ved
    from tokenizers import AddedToken, Regex, pre_tokenizers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    # generate_ved.py's learner, on its captions plus QWEN_CHAT_CORPUS, pre-tokenized by Qwen2's
    # regex (case kept, words carry their leading space) instead of its lower-cased GPT-2 words:
    # learn_gpt2_bpe reads the module's CORPUS and gpt2_pretokens, patched for this one call.
    split = pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False)
    with mock.patch.object(generate_ved, "CORPUS", generate_ved.CORPUS + QWEN_CHAT_CORPUS), \
         mock.patch.object(generate_ved, "gpt2_pretokens", lambda text: [w for w, _ in split.pre_tokenize_str(text)]):
        merges = generate_ved.learn_gpt2_bpe(10_000)  # every merge the corpus supports (a few hundred)
    # Qwen2's vocab.json layout: the 256 byte symbols in GPT-2's order ("!" = 0, "Ġ" = 220,
    # "Ċ" = 198, as in the real one), the merged tokens, then unreachable fillers "Ġw<id>" (Qwen2's
    # regex splits letters from digits, so no text produces them; they decode to " w<id>").
    vocab_list = list(generate_ved.bytes_to_unicode().values())
    seen = set(vocab_list)
    for a, b in merges:
        if a + b not in seen:
            seen.add(a + b)
            vocab_list.append(a + b)
    vocab_list += [f"Ġw{i}" for i in range(len(vocab_list), QWEN_VOCAB_REGULAR)]
    assert len(vocab_list) == len(set(vocab_list)) == QWEN_VOCAB_REGULAR
    # transformers' Qwen2Tokenizer builds Qwen2's tokenizer.json pipeline (NFC, the regex split,
    # byte-level) and adds its eos/pad <|endoftext|> first, at 151643.
    tok = Qwen2Tokenizer(
        vocab={t: i for i, t in enumerate(vocab_list)},
        merges=[tuple(m) for m in merges],
        unk_token=None,
        model_max_length=QWEN3_VL_MAX_LENGTH,
        clean_up_tokenization_spaces=False,
    )
    tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIAL[1:]})
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in QWEN_ADDED])
    tok.eos_token = "<|im_end|>"  # as Qwen3-VL-Instruct's tokenizer_config.json; pad stays <|endoftext|>
    tok.chat_template = QWEN3_VL_CHAT_TEMPLATE
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL + QWEN_ADDED}
    assert list(ids.values()) == list(range(QWEN_VOCAB_REGULAR, QWEN_VOCAB_REGULAR + len(ids))), ids
    assert len(tok) == QWEN_VOCAB_REGULAR + len(ids) == 151669
    assert (tok.eos_token_id, tok.pad_token_id, tok.bos_token_id) == (QWEN_IM_END, QWEN_ENDOFTEXT, None)
    assert ids["<|image_pad|>"] == QWEN_IMAGE_PAD and ids["<|vision_start|>"] == QWEN_VISION_START
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe this image in one sentence."}]}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe this image in one sentence."
                    "<|im_end|>\n<|im_start|>assistant\n"), repr(text)
    prompt = tok(text)["input_ids"]
    assert len(prompt) == 18, tok.convert_ids_to_tokens(prompt)  # each word one token, as with Qwen's
    assert tok.decode([QWEN_VOCAB_REGULAR - 1, QWEN_VOCAB_REGULAR - 2]) == f" w{QWEN_VOCAB_REGULAR - 1} w{QWEN_VOCAB_REGULAR - 2}"
    return tok


def make_qwen3_vl(name: str, out: Path, seed: int) -> None:
    t0 = time.perf_counter()
    tok = build_qwen_tokenizer()
    out.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(out)  # tokenizer.json, tokenizer_config.json, chat_template.jinja
    # The Hub's tokenizer_config.json carries the template too (transformers 5 saves it to
    # chat_template.jinja only); the same text in both.
    tc_path = out / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text(encoding="utf-8"))
    tc["chat_template"] = QWEN3_VL_CHAT_TEMPLATE
    tc_path.write_text(json.dumps(tc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    with open(out / "preprocessor_config.json", "w", encoding="utf-8") as f:
        json.dump(QWEN3_VL_PREPROCESSOR, f, indent=2)
        f.write("\n")
    config = Qwen3VLConfig(
        text_config=QWEN3_VL_2B_TEXT,
        vision_config=QWEN3_VL_2B_VISION,
        image_token_id=QWEN_IMAGE_PAD,
        video_token_id=QWEN_VIDEO_PAD,
        vision_start_token_id=QWEN_VISION_START,
        vision_end_token_id=QWEN_VISION_END,
        tie_word_embeddings=True,
    )
    config.architectures = ["Qwen3VLForConditionalGeneration"]
    torch.manual_seed(seed)
    # Built straight in bfloat16, the Hub checkpoint's dtype (~4.3 GB of weights instead of 8.5 GB
    # in float32 first), with transformers' init (normal, std 0.02; norms 1).
    model = Qwen3VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16).eval()
    assert next(model.parameters()).dtype == torch.bfloat16
    model.generation_config = GenerationConfig(**QWEN3_VL_GENERATION)
    n_params = sum(p.numel() for p in model.parameters())  # lm_head is tied to embed_tokens: counted once
    model.save_pretrained(out)
    report(name, out, n_params, t0)


# --------------------------------------------------------------------------------------
# Captions and boxes: florence-community/Florence-2-base and -large
# --------------------------------------------------------------------------------------
FLORENCE_BART_VOCAB = 50265  # facebook/bart-large: <s> <pad> </s> <unk> ... <mask> = 50264
FLORENCE_SIZES = {
    "florence2-base": (dict(embed_dim=[128, 256, 512, 1024], num_heads=[4, 8, 16, 32], num_groups=[4, 8, 16, 32],
                            projection_dim=768),
                       dict(d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                            decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072)),
    "florence2-large": (dict(embed_dim=[256, 512, 1024, 2048], num_heads=[8, 16, 32, 64], num_groups=[8, 16, 32, 64],
                             projection_dim=1024),
                        dict(d_model=1024, encoder_layers=12, decoder_layers=12, encoder_attention_heads=16,
                             decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096)),
}


def build_florence_tokenizer():
    """The fixture generator's BART tokenizer at the real size: every merge generate_ved.py's
    captions support, fillers up to 50265 entries, Florence-2's added tokens, <image> = 51289."""
    from generate_florence2 import build_tokenizer
    from generate_ved import learn_gpt2_bpe

    tok = build_tokenizer(with_image_token=True, merges=learn_gpt2_bpe(10_000), bart_size=FLORENCE_BART_VOCAB)
    assert tok.image_token_id == 51289 == len(tok) - 1, (tok.image_token_id, len(tok))
    return tok


def make_florence2(name: str, out: Path, seed: int) -> None:
    from transformers import BartConfig, Florence2Config, Florence2ForConditionalGeneration, Florence2Processor

    t0 = time.perf_counter()
    tok = build_florence_tokenizer()
    vision, text = FLORENCE_SIZES[name]
    ip = CLIPImageProcessorPil(
        do_resize=True, size={"height": 768, "width": 768}, resample=3, do_center_crop=False,
        crop_size={"height": 768, "width": 768}, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], do_convert_rgb=True,
        image_seq_length=577,
    )
    config = Florence2Config(
        vision_config=dict(model_type="florence_vision", depths=[1, 1, 9, 1], window_size=12, **vision),
        text_config=BartConfig(vocab_size=51328, max_position_embeddings=1024, activation_function="gelu",
                               scale_embedding=False, bos_token_id=0, pad_token_id=1, eos_token_id=2,
                               decoder_start_token_id=2, forced_eos_token_id=2, **text).to_dict(),
        image_token_id=tok.image_token_id,
    )
    config.architectures = ["Florence2ForConditionalGeneration"]
    torch.manual_seed(seed)
    model = Florence2ForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=0, decoder_start_token_id=2, eos_token_id=2, pad_token_id=1, forced_bos_token_id=0,
        forced_eos_token_id=2, no_repeat_ngram_size=3, num_beams=3, early_stopping=True, max_length=1025)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    # The post-processing rules of transformers' conversion script (fewer banned phrases).
    from generate_florence2 import POST_PROCESSOR_CONFIG

    Florence2Processor(image_processor=ip, tokenizer=tok, post_processor_config=POST_PROCESSOR_CONFIG).save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    report(name, out, n_params, t0)


BUILDERS = {"blip-base": make_blip, "blip-large": make_blip, "clip-b32": make_clip, "siglip-b16": make_siglip,
            "vit-gpt2": make_vit_gpt2, "qwen3-vl-2b": make_qwen3_vl,
            "florence2-base": make_florence2, "florence2-large": make_florence2}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("bench-models"), help="parent directory (default bench-models)")
    ap.add_argument("--which", default="blip-base", help=f"comma-separated, from {','.join(BUILDERS)} (default blip-base)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="rewrite models that already exist")
    args = ap.parse_args()
    names = [n.strip() for n in args.which.split(",") if n.strip()]
    unknown = [n for n in names if n not in BUILDERS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; choose from {list(BUILDERS)}")
    for name in names:
        out = args.out / name
        if (out / "config.json").exists() and (out / "model.safetensors").exists() and not args.force:
            print(f"{name}: {out} exists, skipped (--force to rewrite)")
            continue
        BUILDERS[name](name, out, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())

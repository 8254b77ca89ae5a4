"""Tiny randomly initialized Hugging Face models of several architectures, saved with
``save_pretrained`` next to a tiny word-level tokenizer trained here: what a researcher's own
model folder looks like, built in seconds without any download.

``build(arch, folder)`` writes the folder and returns it; ``ARCHS`` lists the architectures. The
tokenizer adds a BOS token by default for the architectures whose real tokenizers do (Gemma,
Llama) and none for the others (GPT-2, OPT, Qwen2), so the BOS convention of perplexity is tested
both ways. Encoders get ``[CLS] ... [SEP]``.
"""

from __future__ import annotations

from pathlib import Path

import torch

LINES = [
    "the quick brown fox jumps over the lazy dog",
    "a model reads the text and predicts the next word",
    "numbers are rounded to the nearest value of the format",
    "the scale of each block is a power of two",
    "weights and activations are quantized before the matrix product",
    "the error of every layer adds up over the model",
    "a small model is enough to test the code paths",
    "every format has its own range and precision",
    "the data is read from a file on the disk",
    "perplexity is the exponential of the mean negative log likelihood",
    "the tokenizer splits the text into words and numbers",
    "a researcher brings a model and a text of their own",
]
VOCAB = 320


def tokenizer(bos: bool, encoder: bool = False):
    """A byte-level BPE ``PreTrainedTokenizerFast`` (any text tokenizes, no unknowns) with merges
    learned on :data:`LINES`, and ``[BOS]`` prepended by default iff ``bos``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(LINES * 3, trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=specials,
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    ids = {s: tok.token_to_id(s) for s in specials}
    if encoder:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
            special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])])
    elif bos:
        tok.post_processor = processors.TemplateProcessing(
            single="[BOS] $A", pair="[BOS] $A $B", special_tokens=[("[BOS]", ids["[BOS]"])])
    kw = dict(pad_token="[PAD]", unk_token="[UNK]")
    if encoder:
        kw.update(cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    else:
        kw.update(bos_token="[BOS]", eos_token="[EOS]")
    return PreTrainedTokenizerFast(tokenizer_object=tok, **kw)


def _configs():
    import transformers as T

    common = dict(vocab_size=VOCAB)
    llama = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=128, **common)
    return {
        # name: (config, model class, kind, tokenizer adds BOS)
        "gpt2": (T.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=128, bos_token_id=2, eos_token_id=3,
                              **common), T.GPT2LMHeadModel, "causal_lm", False),
        "opt": (T.OPTConfig(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                            max_position_embeddings=128, word_embed_proj_dim=64, pad_token_id=0, bos_token_id=2,
                            eos_token_id=3, **common), T.OPTForCausalLM, "causal_lm", False),
        "distilbert": (T.DistilBertConfig(dim=64, hidden_dim=128, n_layers=2, n_heads=4, max_position_embeddings=128,
                                          pad_token_id=0, **common), T.DistilBertModel, "encoder", False),
        "gemma3_text": (T.Gemma3TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                           max_position_embeddings=128, sliding_window=16, pad_token_id=0,
                                           bos_token_id=2, eos_token_id=3, **common),
                        T.Gemma3ForCausalLM, "causal_lm", True),
        "gemma": (T.GemmaConfig(head_dim=16, pad_token_id=0, bos_token_id=2, eos_token_id=3, **llama),
                  T.GemmaForCausalLM, "causal_lm", True),
        "qwen2": (T.Qwen2Config(pad_token_id=0, bos_token_id=2, eos_token_id=3, **llama), T.Qwen2ForCausalLM,
                  "causal_lm", False),
        "qwen2_moe": (T.Qwen2MoeConfig(hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                                       shared_expert_intermediate_size=64, num_experts=4, num_experts_per_tok=2,
                                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                       decoder_sparse_step=1, max_position_embeddings=128, pad_token_id=0,
                                       bos_token_id=2, eos_token_id=3, **common),
                      T.Qwen2MoeForCausalLM, "causal_lm", False),
        "llama": (T.LlamaConfig(pad_token_id=0, bos_token_id=2, eos_token_id=3, **llama), T.LlamaForCausalLM,
                  "causal_lm", True),
    }


ARCHS = ("gpt2", "opt", "distilbert", "gemma3_text", "gemma", "qwen2", "qwen2_moe", "llama")


def model(arch: str, seed: int = 0):
    """The randomly initialized model (eval mode, float32). Weights are drawn a little wider than
    the default init so that quantization visibly changes the outputs, and norm gains are not
    all equal (so that folding a norm into the next linear is tested for real)."""
    cfg, cls, _, _ = _configs()[arch]
    torch.manual_seed(seed)
    m = cls(cfg).eval()
    with torch.no_grad():
        for k, (name, p) in enumerate(m.named_parameters()):
            g = torch.Generator().manual_seed(seed * 1000 + k)
            if p.dim() >= 2:
                p.normal_(0, 0.1, generator=g)
            elif "norm" in name and name.endswith("weight"):
                p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return m


def build(arch: str, folder: str | Path, seed: int = 0, bos: bool | None = None) -> Path:
    """Save the model of ``arch`` and its tokenizer into ``folder`` (a Hugging Face model folder)."""
    _, _, kind, adds_bos = _configs()[arch]
    folder = Path(folder)
    model(arch, seed).save_pretrained(folder)
    tokenizer(adds_bos if bos is None else bos, encoder=kind == "encoder").save_pretrained(folder)
    return folder


def kind(arch: str) -> str:
    return _configs()[arch][2]


def adds_bos(arch: str) -> bool:
    return _configs()[arch][3]

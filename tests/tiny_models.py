"""Tiny random-weight Hugging Face models built in-process (no download), saved
with save_pretrained so they load through headscope's local-directory route."""

from __future__ import annotations

from pathlib import Path

import torch

VOCAB = 100
ARCHES = ("gpt2", "llama", "bert")


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<bos>": 1, "<unk>": 2, **{f"t{i}": i for i in range(3, VOCAB)}}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<bos>",
        unk_token="<unk>",
        eos_token="<bos>",
    )


def tiny_hf_model(arch: str, seed: int = 0, initializer_range: float | None = None):
    """A 2-layer, 4-head random model: GPT-2 (fused QKV, learned positions),
    Llama (RoPE, grouped-query: 2 kv heads) or BERT (bidirectional encoder).

    `initializer_range` (default: the config's 0.02) sets the init std; around 0.2
    gives peaked attention patterns, which make attention tests discriminating."""
    from transformers import (
        BertConfig,
        BertForMaskedLM,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    torch.manual_seed(seed)
    if arch == "gpt2":
        config = GPT2Config(n_layer=2, n_head=4, n_embd=32, vocab_size=VOCAB, n_positions=64)
        model = GPT2LMHeadModel(config)
    elif arch == "llama":
        config = LlamaConfig(
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            hidden_size=32,
            intermediate_size=64,
            vocab_size=VOCAB,
            max_position_embeddings=64,
        )
        model = LlamaForCausalLM(config)
    elif arch == "bert":
        config = BertConfig(
            num_hidden_layers=2,
            num_attention_heads=4,
            hidden_size=32,
            intermediate_size=64,
            vocab_size=VOCAB,
            max_position_embeddings=64,
            pad_token_id=0,
        )
        model = BertForMaskedLM(config)
    else:
        raise ValueError(f"unknown tiny architecture {arch!r}")
    if initializer_range is not None:
        config.initializer_range = initializer_range
        model.apply(model._init_weights)
    return model.eval()


def build_tiny(
    arch: str, directory: str | Path, seed: int = 0, initializer_range: float | None = None
) -> Path:
    """Save a tiny model and tokenizer to `directory`; returns the directory."""
    directory = Path(directory)
    tiny_hf_model(arch, seed, initializer_range).save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


def load_eager_hf(directory: str | Path):
    """The same checkpoint as a plain Hugging Face model with eager attention (the oracle)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

    config = AutoConfig.from_pretrained(directory)
    auto = AutoModelForMaskedLM if config.model_type == "bert" else AutoModelForCausalLM
    return auto.from_pretrained(directory, attn_implementation="eager").eval()


def build_tiny_gpt_neox(directory: str | Path) -> Path:
    """A 2-layer, 4-head GPT-NeoX (Pythia's architecture: rotary on a quarter of
    each head, parallel attention and MLP, fused QKV) saved with the tiny word
    tokenizer; peaked attention (init std 0.2)."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    directory = Path(directory)
    torch.manual_seed(0)
    config = GPTNeoXConfig(
        num_hidden_layers=2,
        num_attention_heads=4,
        hidden_size=32,
        intermediate_size=64,
        vocab_size=VOCAB,
        max_position_embeddings=64,
        rotary_pct=0.25,
        bos_token_id=1,
        eos_token_id=1,
        initializer_range=0.2,
    )
    GPTNeoXForCausalLM(config).eval().save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


def build_tiny_vision(directory: str | Path, family: str = "vit", seed: int = 0) -> Path:
    """A 2-layer, 4-head random image classifier (`ViTForImageClassification` or
    `DeiTForImageClassification`: [CLS] and a distillation token) on 12×12
    RGB images in 3×3 patches (a 4×4 grid), 5 classes, peaked attention
    (init std 0.2), with a ViT preprocessor config (mean 0.5, std 0.5)."""
    import json

    from transformers import (
        DeiTConfig,
        DeiTForImageClassification,
        ViTConfig,
        ViTForImageClassification,
    )

    directory = Path(directory)
    torch.manual_seed(seed)
    options = dict(
        image_size=12,
        patch_size=3,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=5,
        initializer_range=0.2,
    )
    if family == "vit":
        model = ViTForImageClassification(ViTConfig(**options))
    elif family == "deit":
        model = DeiTForImageClassification(DeiTConfig(**options))
    else:
        raise ValueError(f"unknown vision family {family!r}")
    model.eval().save_pretrained(directory)
    processor = {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"height": 12, "width": 12},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    (directory / "preprocessor_config.json").write_text(json.dumps(processor))
    return directory


def load_eager_hf_vision(directory: str | Path):
    """The same image classifier as a plain Hugging Face model with eager attention."""
    from transformers import AutoModelForImageClassification

    return AutoModelForImageClassification.from_pretrained(
        directory, attn_implementation="eager"
    ).eval()

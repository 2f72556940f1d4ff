"""Tiny random-weight checkpoints of every model family the family matrix covers.

One builder per family: 2 layers, hidden size 32, 4 query heads, the family's
distinguishing attention feature switched on so that it is exercised
(grouped- or multi-query attention, sliding windows shorter than the test
prompt, local/global alternation, partial rotary, ALiBi, logit softcapping,
fused QKV). Nothing is downloaded: configs are built here, models initialized
at random (std `INIT`, so attention is peaked and mistakes show) and written
with save_pretrained next to the word-level tokenizer of tests/tiny_models.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tiny_models import VOCAB, tiny_tokenizer

INIT = 0.2  # init std: peaked attention patterns
WINDOW = 4  # sliding / local window, shorter than the test prompts (PROMPT_LENGTH)
SOFTCAP = 2.0  # attention logit softcap small enough to bend the scores
PROMPT_LENGTH = 12

COMMON = {"vocab_size": VOCAB, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 1}
DECODER = {
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "hidden_size": 32,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
    **COMMON,
}


@dataclass(frozen=True)
class Family:
    """A family of the matrix: its name, the Hugging Face class and config that
    build it, the features it exercises, whether it is causal, the sliding /
    local window of each layer (None: full attention), and the path of each
    layer's attention output projection in the Hugging Face model (its input
    columns are the heads' slices)."""

    name: str
    model_class: str
    config_class: str
    config: dict[str, Any]
    features: str
    out_proj: str = "model.layers.{layer}.self_attn.o_proj"
    causal: bool = True
    windows: tuple[int | None, ...] = (None, None)
    auto: str = "AutoModelForCausalLM"

    def build(self, directory: str | Path, seed: int = 0) -> Path:
        """Write the random checkpoint and the tiny tokenizer to `directory`."""
        import transformers

        directory = Path(directory)
        config = getattr(transformers, self.config_class)(**self.config)
        config.initializer_range = INIT
        torch.manual_seed(seed)
        model = getattr(transformers, self.model_class)(config).eval()
        _randomize_norms(model, seed)
        model.save_pretrained(directory)
        tiny_tokenizer().save_pretrained(directory)
        return directory


def _randomize_norms(model: torch.nn.Module, seed: int) -> None:
    """Norm gains and all biases drawn away from their init (1 / 0) so that a
    projection or norm mixed up between heads or layers shows in the checks."""
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if parameter.dim() != 1 or leaf not in ("weight", "bias"):
                continue
            if leaf == "bias" or "norm" in name or "ln" in name:
                noise = torch.randn(parameter.shape, generator=generator) * 0.1
                parameter.add_(noise.to(parameter.dtype))


def _family(name: str, model: str, config: str, features: str, **settings: Any) -> Family:
    return Family(name, model, config, settings.pop("_config"), features, **settings)


FAMILIES: tuple[Family, ...] = (
    _family(
        "GPT-2",
        "GPT2LMHeadModel",
        "GPT2Config",
        "fused QKV (Conv1D), learned positions",
        out_proj="transformer.h.{layer}.attn.c_proj",
        _config={"n_layer": 2, "n_head": 4, "n_embd": 32, "n_positions": 64, **COMMON},
    ),
    _family(
        "GPT-NeoX",
        "GPTNeoXForCausalLM",
        "GPTNeoXConfig",
        "fused per-head QKV, partial rotary (25%), parallel residual",
        out_proj="gpt_neox.layers.{layer}.attention.dense",
        _config={
            **DECODER,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
            "partial_rotary_factor": 0.25,
        },
    ),
    _family(
        "GPT-Neo",
        "GPTNeoForCausalLM",
        "GPTNeoConfig",
        f"global/local layer alternation (window {WINDOW}), unscaled scores",
        out_proj="transformer.h.{layer}.attn.attention.out_proj",
        windows=(None, WINDOW),
        _config={
            "num_layers": 2,
            "num_heads": 4,
            "hidden_size": 32,
            "attention_types": [[["global", "local"], 1]],
            "window_size": WINDOW,
            "max_position_embeddings": 64,
            **COMMON,
        },
    ),
    _family(
        "GPT-J",
        "GPTJForCausalLM",
        "GPTJConfig",
        "partial interleaved rotary (rotary_dim 4), parallel residual",
        out_proj="transformer.h.{layer}.attn.out_proj",
        _config={
            "n_layer": 2,
            "n_head": 4,
            "n_embd": 32,
            "rotary_dim": 4,
            "n_positions": 64,
            **COMMON,
        },
    ),
    _family(
        "OPT",
        "OPTForCausalLM",
        "OPTConfig",
        "learned positions (offset 2), biased projections",
        out_proj="model.decoder.layers.{layer}.self_attn.out_proj",
        _config={
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "hidden_size": 32,
            "ffn_dim": 64,
            "word_embed_proj_dim": 32,
            "max_position_embeddings": 64,
            **COMMON,
        },
    ),
    _family(
        "Llama",
        "LlamaForCausalLM",
        "LlamaConfig",
        "RoPE, grouped-query (2 kv heads)",
        _config={**DECODER, "num_key_value_heads": 2},
    ),
    _family(
        "Mistral",
        "MistralForCausalLM",
        "MistralConfig",
        f"grouped-query (2 kv heads), sliding window {WINDOW}",
        windows=(WINDOW, WINDOW),
        _config={**DECODER, "num_key_value_heads": 2, "head_dim": 8, "sliding_window": WINDOW},
    ),
    _family(
        "Qwen 2",
        "Qwen2ForCausalLM",
        "Qwen2Config",
        f"grouped-query (2 kv heads), QKV bias, sliding window {WINDOW} on layer 1",
        windows=(None, WINDOW),
        _config={
            **DECODER,
            "num_key_value_heads": 2,
            "use_sliding_window": True,
            "sliding_window": WINDOW,
            "max_window_layers": 1,
        },
    ),
    _family(
        "Qwen 3",
        "Qwen3ForCausalLM",
        "Qwen3Config",
        "grouped-query (2 kv heads), q/k RMSNorm",
        _config={**DECODER, "num_key_value_heads": 2, "head_dim": 8},
    ),
    _family(
        "Gemma",
        "GemmaForCausalLM",
        "GemmaConfig",
        "multi-query (1 kv head), head_dim 16 ≠ hidden/heads",
        _config={**DECODER, "num_key_value_heads": 1, "head_dim": 16},
    ),
    _family(
        "Gemma 2",
        "Gemma2ForCausalLM",
        "Gemma2Config",
        f"attention logit softcap {SOFTCAP}, sliding/global alternation (window {WINDOW}), "
        "query_pre_attn_scalar, grouped-query",
        windows=(WINDOW, None),
        _config={
            **DECODER,
            "num_key_value_heads": 2,
            "head_dim": 8,
            "sliding_window": WINDOW,
            "attn_logit_softcapping": SOFTCAP,
            "final_logit_softcapping": 30.0,
            "query_pre_attn_scalar": 16,
            "layer_types": ["sliding_attention", "full_attention"],
        },
    ),
    _family(
        "Gemma 3",
        "Gemma3ForCausalLM",
        "Gemma3TextConfig",
        f"sliding/global alternation (window {WINDOW}), q/k RMSNorm, two RoPE bases",
        windows=(WINDOW, None),
        _config={
            **DECODER,
            "num_key_value_heads": 2,
            "head_dim": 8,
            "sliding_window": WINDOW,
            "query_pre_attn_scalar": 8,
            "layer_types": ["sliding_attention", "full_attention"],
        },
    ),
    _family(
        "Phi-3",
        "Phi3ForCausalLM",
        "Phi3Config",
        f"fused QKV, grouped-query (2 kv heads), partial rotary (50%), sliding window {WINDOW}",
        windows=(WINDOW, WINDOW),
        _config={
            **DECODER,
            "num_key_value_heads": 2,
            "partial_rotary_factor": 0.5,
            "sliding_window": WINDOW,
        },
    ),
    _family(
        "OLMo 2",
        "Olmo2ForCausalLM",
        "Olmo2Config",
        "q/k RMSNorm over all heads, post-norm blocks",
        _config={**DECODER, "num_key_value_heads": 2},
    ),
    _family(
        "BLOOM",
        "BloomForCausalLM",
        "BloomConfig",
        "ALiBi, fused per-head QKV",
        out_proj="transformer.h.{layer}.self_attention.dense",
        _config={"n_layer": 2, "n_head": 4, "hidden_size": 32, **COMMON},
    ),
    _family(
        "Falcon",
        "FalconForCausalLM",
        "FalconConfig",
        "fused QKV, multi-query (1 kv head), rotary, parallel attention",
        out_proj="transformer.h.{layer}.self_attention.dense",
        _config={
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "hidden_size": 32,
            "multi_query": True,
            "new_decoder_architecture": False,
            "parallel_attn": True,
            "alibi": False,
            "max_position_embeddings": 64,
            **COMMON,
        },
    ),
    _family(
        "BERT",
        "BertForMaskedLM",
        "BertConfig",
        "bidirectional encoder",
        out_proj="bert.encoder.layer.{layer}.attention.output.dense",
        causal=False,
        auto="AutoModelForMaskedLM",
        _config={**DECODER, "max_position_embeddings": 64},
    ),
    _family(
        "RoBERTa",
        "RobertaForMaskedLM",
        "RobertaConfig",
        "bidirectional encoder, position offset (padding_idx + 1)",
        out_proj="roberta.encoder.layer.{layer}.attention.output.dense",
        causal=False,
        auto="AutoModelForMaskedLM",
        _config={**DECODER, "max_position_embeddings": 64},
    ),
)

BY_NAME: dict[str, Family] = {family.name: family for family in FAMILIES}

#: A family transformer-lens cannot load: load_model must refuse it in one line.
UNSUPPORTED = _family(
    "DistilBERT",
    "DistilBertForMaskedLM",
    "DistilBertConfig",
    "not loadable by transformer-lens",
    causal=False,
    auto="AutoModelForMaskedLM",
    _config={
        "n_layers": 2,
        "n_heads": 4,
        "dim": 32,
        "hidden_dim": 64,
        "max_position_embeddings": 64,
        **COMMON,
    },
)


def load_eager(directory: str | Path, family: Family) -> torch.nn.Module:
    """The plain Hugging Face model with eager attention: the oracle."""
    import transformers

    auto: Callable = getattr(transformers, family.auto).from_pretrained
    return auto(directory, attn_implementation="eager").eval()

"""What each component writes toward one prediction (docs/methods.md §6): direct
logit attribution per head and per MLP, the logit lens per layer, and the
residual-stream contribution graph, all from one forward of one prompt.

- `direct_logit_attribution` (Elhage et al. 2021, "A Mathematical Framework for
  Transformer Circuits"; transformer-lens `logit_attrs`): the final residual
  of a pre-norm model is the sum embedding + Σ_l (Σ_h z_h·W_O[l,h] + b_O[l]) +
  Σ_l MLP_l. With the final norm's scale s frozen at its value on the actual
  forward, the norm is affine, LN(x) = g ⊙ centre(x)/s + b (RMSNorm: no centring,
  no b), so each part's logit is its own share: part·(g ⊙ W_U[:, t])/s after
  centring, and the parts plus the bias term b·W_U[:, t] + b_U[t] sum exactly to
  the model's logit.
- `logit_lens` (nostalgebraist 2020, "interpreting GPT: the logit lens"): the
  residual after each layer through the final norm (each with its own scale)
  and the unembedding; the last row is the model's output.
- `contribution_graph`: the per-block parts at the chosen position handed to
  `headscope.analyses.contributions.contribution_graph` (the LLM Transparency
  Tool's view, Ferrando & Voita 2024).

- `embedding_attribution`: for post-norm encoders (minilm, BERT), the sentence
  embedding split into the same parts with every LayerNorm's scale frozen
  (docs/methods.md §6.4).

The logit views decompose only models whose residual stream is a plain sum of its
parts (pre-norm decoders: GPT-2, Llama, NeoX...) and whose unembedding reads the
final norm's output; anything else (post-norm encoders such as minilm, which also
has no trained LM head) is refused with an InputError that says why.
"""

# ruff: noqa: N806, N815  (W_O, W_U, b_U: the transformer-lens weight names)

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from headscope.analyses.contributions import ContributionGraph
from headscope.analyses.contributions import contribution_graph as build_graph
from headscope.errors import InputError
from headscope.experiments.inputs import Prompts, as_batch
from headscope.models.loading import HeadscopeModel
from headscope.models.weights import _is_rms, _norm_gain
from headscope.probes.run import run
from headscope.probes.sites import Site

NormKind = Literal["LayerNorm", "RMSNorm"]
#: Relative tolerance of the identities checked on every forward (float32 sums).
IDENTITY_RTOL = 1e-4


@dataclass(frozen=True)
class LogitAttribution:
    """Direct logit attribution of one prediction (`direct_logit_attribution`).

    Every value is in logit units, for the logit of `target` at `position` (or
    the difference target − `contrast`). `heads[l, h]`: head h of layer l;
    `attention_bias[l]`: layer l's output bias b_O; `mlps[l]`: layer l's MLP
    (its biases included); `token_embedding`, `positional_embedding` (learned
    absolute positions; 0 for rotary models); `final_bias`: the final norm's
    bias and the unembedding's bias. `total()` sums them; `logit` is the
    model's own value from the same forward, so `total() - logit` is the
    decomposition's error (float32 rounding only). `scale`: the final norm's
    scale s, frozen at its value on this forward.
    """

    tokens: tuple[str, ...]
    position: int
    target: int
    target_token: str
    contrast: int | None
    contrast_token: str | None
    heads: Float[Tensor, "layer head"]
    attention_bias: Float[Tensor, " layer"]
    mlps: Float[Tensor, " layer"]
    token_embedding: float
    positional_embedding: float
    final_bias: float
    logit: float
    scale: float
    norm: NormKind

    def total(self) -> float:
        """The sum of every part: equals `logit` up to float32 rounding."""
        return float(
            self.heads.sum()
            + self.attention_bias.sum()
            + self.mlps.sum()
            + self.token_embedding
            + self.positional_embedding
            + self.final_bias
        )

    @property
    def attention(self) -> Float[Tensor, " layer"]:
        """Per layer: its heads plus its output bias (the whole attention block)."""
        return self.heads.sum(1) + self.attention_bias

    @property
    def measured(self) -> str:
        """What the numbers measure, in words."""
        if self.contrast is None:
            return f"logit of {self.target_token!r} at position {self.position}"
        return (
            f"logit difference {self.target_token!r} − {self.contrast_token!r} "
            f"at position {self.position}"
        )


@dataclass(frozen=True)
class LogitLens:
    """The logit lens at one position (`logit_lens`): one row per stage, the
    residual after the embeddings (`stages[0]`) and after each layer.

    `top_ids`/`top_tokens`/`top_probs`: the k most probable next tokens per
    stage (softmax over the whole vocabulary); `target_logit`/`target_prob`/
    `target_rank` (0 = top): the chosen token at each stage. The last stage is
    the model's own output."""

    tokens: tuple[str, ...]
    position: int
    target: int
    target_token: str
    stages: tuple[str, ...]
    top_ids: Int[Tensor, "stage k"]
    top_tokens: tuple[tuple[str, ...], ...]
    top_probs: Float[Tensor, "stage k"]
    target_logit: Float[Tensor, " stage"]
    target_prob: Float[Tensor, " stage"]
    target_rank: Int[Tensor, " stage"]


@dataclass(frozen=True)
class Contributions:
    """Everything the Contributions page shows, from one forward: the direct
    logit attribution, the logit lens and the residual contribution graph."""

    attribution: LogitAttribution
    lens: LogitLens
    graph: ContributionGraph
    top_prediction: int
    next_token: int | None


@dataclass(frozen=True)
class _Parts:
    """The residual stream of one prompt at one position, split into its parts
    (float64), and what the model itself computed from it."""

    tokens: tuple[str, ...]
    ids: tuple[int, ...]
    position: int
    token_embedding: Tensor  # [d_model]
    positional: Tensor  # [d_model]
    heads: Tensor  # [layer, head, d_model]
    attention_bias: Tensor  # [layer, d_model]
    mlps: Tensor  # [layer, d_model]
    residual: Tensor  # [stage, d_model]: after the embeddings, then after each layer
    logits: Tensor  # [vocab], the model's own
    gain: Tensor  # [d_model]
    norm_bias: Tensor  # [d_model]
    eps: float
    rms: bool
    W_U: Tensor  # [d_model, vocab], the model's own (dtype, device)
    b_U: Tensor  # [vocab]


def _bridge_bias(module: Any, name: str) -> Tensor | None:
    value = getattr(module, name, None)
    if value is None:
        value = getattr(getattr(module, "original_component", None), name, None)
    return None if value is None else value.detach().double()


def _norm_affine(model: HeadscopeModel, norm: Any, what: str) -> tuple[Tensor, Tensor, float, bool]:
    """(gain g, bias b, eps, RMS?) of a norm module, in float64."""
    gain = _norm_gain(norm) if norm is not None else None
    inner = getattr(norm, "original_component", None)
    eps = getattr(inner, "eps", getattr(inner, "variance_epsilon", None))
    if gain is None or eps is None:
        raise InputError(
            f"{model.spec.name}: the gain or epsilon of {what} cannot be read, so the "
            "residual stream cannot be decomposed through it"
        )
    bias = _bridge_bias(norm, "bias")
    if bias is None:
        bias = torch.zeros_like(gain, dtype=torch.float64)
    return gain.double(), bias, float(eps), _is_rms(norm)


def _final_norm(model: HeadscopeModel) -> tuple[Tensor, Tensor, float, bool]:
    """(gain g, bias b, eps, RMS?) of the final norm, in float64."""
    return _norm_affine(model, getattr(model.bridge, "ln_final", None), "the final norm")


def _normalize(x: Tensor, gain: Tensor, bias: Tensor, eps: float, rms: bool) -> Tensor:
    """The final norm applied to `x` (`[..., d_model]`) with its own scale."""
    centred = x if rms else x - x.mean(-1, keepdim=True)
    scale = (centred.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    return gain * centred / scale + bias


def _close(a: Tensor, b: Tensor) -> bool:
    return bool((a - b).abs().max() <= IDENTITY_RTOL * max(1.0, float(b.abs().max())))


def _check_prediction_model(model: HeadscopeModel) -> None:
    spec = model.spec
    if not spec.has_lm_head:
        raise InputError(
            f"{spec.name} has no trained LM head, so direct logit attribution and the "
            "logit lens mean nothing for it"
        )
    if not spec.causal:
        raise InputError(
            f"{spec.name} is an encoder: its residual stream is re-normalised after every "
            "block (post-norm), so it is not a sum of per-component parts"
        )


@torch.no_grad()
def _parts(model: HeadscopeModel, prompts: Prompts, position: int | None) -> _Parts:
    """One forward: every part of the residual stream at `position` (None: the
    last token), checked against the identities the decomposition relies on."""
    _check_prediction_model(model)
    batch = as_batch(model, prompts)
    if batch.batch_size != 1:
        raise InputError("contributions take one prompt, got a batch of several")
    n = batch.length
    if position is None:
        position = n - 1
    if isinstance(position, bool) or not isinstance(position, int) or not 0 <= position < n:
        raise InputError(f"position must be a token index in [0, {n}), got {position!r}")
    n_layers = model.spec.n_layers
    reads = [
        Site(None, "embed"),
        Site(0, "resid_pre"),
        Site(None, "final_norm"),
        Site(None, "unembed_in"),
    ]
    for layer in range(n_layers):
        reads += [
            Site(layer, "z"),
            Site(layer, "attn_out"),
            Site(layer, "mlp_out"),
            Site(layer, "resid_post"),
        ]
    result = run(model, batch, read=reads)
    assert result.output is not None

    def at(site: Site) -> Tensor:
        return result[site][0, position].double()

    bridge = model.bridge
    W_O = bridge.W_O.detach().double()  # [layer, head, d_head, d_model]
    heads, biases, mlps, residual = [], [], [], [at(Site(0, "resid_pre"))]
    for layer in range(n_layers):
        per_head = torch.einsum("hd,hdm->hm", at(Site(layer, "z")), W_O[layer])
        bias = _bridge_bias(bridge.blocks[layer].attn, "b_O")
        bias = torch.zeros_like(per_head[0]) if bias is None else bias
        if not _close(per_head.sum(0) + bias, at(Site(layer, "attn_out"))):
            raise InputError(
                f"{model.spec.name}: layer {layer}'s attention output is not Σ_h z_h·W_O + b_O, "
                "so it cannot be split into heads"
            )
        heads.append(per_head)
        biases.append(bias)
        mlps.append(at(Site(layer, "mlp_out")))
        residual.append(at(Site(layer, "resid_post")))
    token_embedding = at(Site(None, "embed"))
    heads_t, biases_t, mlps_t = torch.stack(heads), torch.stack(biases), torch.stack(mlps)
    final = residual[-1]
    summed = residual[0] + heads_t.sum((0, 1)) + biases_t.sum(0) + mlps_t.sum(0)
    if not _close(summed, final):
        raise InputError(
            f"{model.spec.name}: the final residual is not the sum of the embeddings, the "
            "attention and the MLP outputs (a post-norm or otherwise non-additive block), "
            "so it cannot be decomposed"
        )
    if not _close(at(Site(None, "unembed_in")), at(Site(None, "final_norm"))):
        raise InputError(
            f"{model.spec.name}: the unembedding does not read the final norm's output, "
            "so the logits are not an affine function of the final residual"
        )
    gain, norm_bias, eps, rms = _final_norm(model)
    if not _close(_normalize(final, gain, norm_bias, eps, rms), at(Site(None, "final_norm"))):
        raise InputError(
            f"{model.spec.name}: the final norm could not be reproduced from its gain and "
            "epsilon, so its frozen-scale form would not be exact"
        )
    b_U = getattr(bridge, "b_U", None)
    W_U = bridge.W_U.detach()  # not copied: float64 only for the columns used
    b_U = (
        torch.zeros(W_U.shape[1], dtype=W_U.dtype, device=W_U.device)
        if b_U is None
        else b_U.detach()
    )
    return _Parts(
        tokens=tuple(batch.tokens[0]),
        ids=tuple(int(i) for i in batch.ids[0, :n]),
        position=position,
        token_embedding=token_embedding,
        positional=residual[0] - token_embedding,
        heads=heads_t,
        attention_bias=biases_t,
        mlps=mlps_t,
        residual=torch.stack(residual),
        logits=result.output.logits[0, position].double(),
        gain=gain,
        norm_bias=norm_bias,
        eps=eps,
        rms=rms,
        W_U=W_U,
        b_U=b_U,
    )


def _check_token(model: HeadscopeModel, token: object, name: str) -> int:
    if isinstance(token, bool) or not isinstance(token, int):
        raise InputError(f"{name} must be a token id (an int), got {token!r}")
    if not 0 <= token < model.spec.d_vocab:
        raise InputError(f"{name} {token} is outside the vocabulary [0, {model.spec.d_vocab})")
    return token


def token_id(model: HeadscopeModel, text: str) -> int:
    """The id of `text` when the tokenizer makes it exactly one token (no special
    tokens added); InputError otherwise."""
    if not isinstance(text, str) or not text:
        raise InputError("a target token must be a non-empty string")
    ids = list(model.tokenizer(text, add_special_tokens=False)["input_ids"])
    if len(ids) != 1:
        raise InputError(f"{text!r} is {len(ids)} tokens, not one; pick a single token")
    unknown = getattr(model.tokenizer, "unk_token_id", None)
    if unknown is not None and ids[0] == unknown and text != model.tokenizer.unk_token:
        raise InputError(f"{text!r} is not in the vocabulary (the tokenizer makes it unknown)")
    return int(ids[0])


def _attribution(
    model: HeadscopeModel, parts: _Parts, target: int, contrast: int | None
) -> LogitAttribution:
    direction = parts.W_U[:, target].double()
    bias = parts.b_U[target].double()
    logit = parts.logits[target].clone()
    if contrast is not None:
        direction = direction - parts.W_U[:, contrast].double()
        bias = bias - parts.b_U[contrast].double()
        logit -= parts.logits[contrast]
    final = parts.residual[-1]
    centred = final if parts.rms else final - final.mean()
    scale = float((centred.pow(2).mean() + parts.eps).sqrt())
    read = parts.gain * direction / scale

    def dla(vectors: Tensor) -> Tensor:
        if not parts.rms:
            vectors = vectors - vectors.mean(-1, keepdim=True)
        return (vectors @ read).cpu()

    decode = model.tokenizer.decode
    return LogitAttribution(
        tokens=parts.tokens,
        position=parts.position,
        target=target,
        target_token=decode([target]),
        contrast=contrast,
        contrast_token=None if contrast is None else decode([contrast]),
        heads=dla(parts.heads),
        attention_bias=dla(parts.attention_bias),
        mlps=dla(parts.mlps),
        token_embedding=float(dla(parts.token_embedding)),
        positional_embedding=float(dla(parts.positional)),
        final_bias=float(parts.norm_bias @ direction + bias),
        logit=float(logit),
        scale=scale,
        norm="RMSNorm" if parts.rms else "LayerNorm",
    )


def _lens(model: HeadscopeModel, parts: _Parts, target: int, k: int) -> LogitLens:
    normed = _normalize(parts.residual, parts.gain, parts.norm_bias, parts.eps, parts.rms)
    logits = (normed.to(parts.W_U.dtype) @ parts.W_U + parts.b_U).float().cpu()
    probs = logits.softmax(-1)
    k = max(1, min(int(k), probs.shape[-1]))
    top_probs, top_ids = probs.topk(k, dim=-1)
    rank = (logits > logits[:, target : target + 1]).sum(-1)
    decode = model.tokenizer.decode
    n_layers = parts.residual.shape[0] - 1
    return LogitLens(
        tokens=parts.tokens,
        position=parts.position,
        target=target,
        target_token=decode([target]),
        stages=("embeddings", *(f"layer {layer}" for layer in range(n_layers))),
        top_ids=top_ids,
        top_tokens=tuple(tuple(decode([int(i)]) for i in row) for row in top_ids),
        top_probs=top_probs.float(),
        target_logit=logits[:, target].float(),
        target_prob=probs[:, target].float(),
        target_rank=rank,
    )


def _graph(parts: _Parts, min_share: float) -> ContributionGraph:
    return build_graph(
        parts.residual[0].cpu(),
        parts.heads.cpu(),
        parts.attention_bias.cpu(),
        parts.mlps.cpu(),
        min_share=min_share,
    )


def direct_logit_attribution(
    model: HeadscopeModel,
    prompt: Prompts,
    position: int | None = None,
    token: int | None = None,
    *,
    contrast: int | None = None,
) -> LogitAttribution:
    """Direct logit attribution of `token`'s logit at `position` (None: the last
    token) to every head, every MLP, the embeddings and the biases, with the
    final norm's scale frozen at its value on this forward (module docstring).
    `token` None: the model's top prediction there. `contrast`: attribute the
    logit difference token − contrast instead (Wang et al. 2022's metric).

    Invariant: `result.total() == result.logit` up to float32 rounding.
    Memory: one forward plus the per-layer activations at one position.
    """
    parts = _parts(model, prompt, position)
    target = int(parts.logits.argmax()) if token is None else _check_token(model, token, "token")
    if contrast is not None:
        contrast = _check_token(model, contrast, "contrast")
    return _attribution(model, parts, target, contrast)


def logit_lens(
    model: HeadscopeModel,
    prompt: Prompts,
    position: int | None = None,
    token: int | None = None,
    *,
    k: int = 5,
) -> LogitLens:
    """The logit lens at `position` (None: the last token): the residual after
    the embeddings and after each layer, through the final norm (its own scale
    per stage) and the unembedding; the `k` most probable tokens per stage and
    `token`'s (None: the model's top prediction) rank and probability."""
    parts = _parts(model, prompt, position)
    target = int(parts.logits.argmax()) if token is None else _check_token(model, token, "token")
    return _lens(model, parts, target, k)


def contribution_graph(
    model: HeadscopeModel, prompt: Prompts, position: int | None = None, *, min_share: float = 0.04
) -> ContributionGraph:
    """The residual contribution graph at `position` (None: the last token); see
    `headscope.analyses.contributions.contribution_graph`."""
    return _graph(_parts(model, prompt, position), min_share)


def contributions(
    model: HeadscopeModel,
    prompt: Prompts,
    position: int | None = None,
    token: int | Literal["top", "next"] = "top",
    *,
    contrast: int | None = None,
    k: int = 5,
    min_share: float = 0.04,
) -> Contributions:
    """Direct logit attribution, logit lens and contribution graph from one
    forward. `token`: an id, "top" (the model's top prediction at `position`)
    or "next" (the prompt's actual next token; InputError at the last token)."""
    parts = _parts(model, prompt, position)
    top = int(parts.logits.argmax())
    following = parts.ids[parts.position + 1] if parts.position + 1 < len(parts.ids) else None
    if token == "top":
        target = top
    elif token == "next":
        if following is None:
            raise InputError("the last token has no next token in the prompt; pick 'top'")
        target = following
    else:
        target = _check_token(model, token, "token")
    if contrast is not None:
        contrast = _check_token(model, contrast, "contrast")
    return Contributions(
        attribution=_attribution(model, parts, target, contrast),
        lens=_lens(model, parts, target, k),
        graph=_graph(parts, min_share),
        top_prediction=top,
        next_token=following,
    )


@dataclass(frozen=True)
class EmbeddingAttribution:
    """Each component's share of an encoder's sentence embedding
    (`embedding_attribution`), for post-norm encoders such as minilm.

    The sentence embedding e (the mean over tokens of the last block's output) is
    split into parts with every LayerNorm's scale frozen at its value on this
    forward (docs/methods.md §6.4); each part is reported as its projection on
    e's direction, part·e/‖e‖, so the values sum to ‖e‖ (`norm`). `heads[l, h]`:
    head h of layer l at every token; `attention_bias[l]`, `mlps[l]` likewise;
    `embeddings`: the embedding block's output (after its own LayerNorm);
    `norm_biases`: the biases of every block LayerNorm. 0 means no direct part in
    the embedding's direction."""

    tokens: tuple[str, ...]
    heads: Float[Tensor, "layer head"]
    attention_bias: Float[Tensor, " layer"]
    mlps: Float[Tensor, " layer"]
    embeddings: float
    norm_biases: float
    norm: float

    def total(self) -> float:
        """The sum of every part: equals `norm` up to float32 rounding."""
        return float(
            self.heads.sum()
            + self.attention_bias.sum()
            + self.mlps.sum()
            + self.embeddings
            + self.norm_biases
        )

    @property
    def attention(self) -> Float[Tensor, " layer"]:
        return self.heads.sum(1) + self.attention_bias

    @property
    def measured(self) -> str:
        return f"projection on the sentence embedding's direction (‖e‖ = {self.norm:.3f})"


def _frozen(parts: Tensor, whole: Tensor, gain: Tensor, eps: float, rms: bool) -> Tensor:
    """The linear part of a norm applied to each of `parts` (`[part, position,
    d_model]`) with the scale of `whole` (`[position, d_model]`, their sum)."""
    centred = whole if rms else whole - whole.mean(-1, keepdim=True)
    scale = (centred.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    if not rms:
        parts = parts - parts.mean(-1, keepdim=True)
    return gain * parts / scale


@torch.no_grad()
def embedding_attribution(model: HeadscopeModel, prompt: Prompts) -> EmbeddingAttribution:
    """Each head's, MLP's and bias's part of a post-norm encoder's sentence
    embedding (docs/methods.md §6.4). In a post-norm block every sum is
    re-normalised: m = LN1(h + Σ_h z_h·W_O + b_O), h' = LN2(m + MLP(m)). With each
    LayerNorm's scale frozen at its value on this forward, LN is affine, so the
    last block's output at every token is a sum of the embedding block's output,
    every head's, b_O's and MLP's output and every LN bias, each carried through
    the linear parts of the later norms; the mean over tokens gives e. Each part
    is projected on e/‖e‖, so the parts sum to ‖e‖.

    Checked on every forward (InputError where one fails): b_O plus the heads
    equals what LN1 adds to the residual, LN1 and LN2 are reproduced from their
    gains, and the parts sum to the model's own embedding. Memory: O(layers ·
    heads · tokens · d_model) float64 for the carried parts.
    """
    spec = model.spec
    batch = as_batch(model, prompt)
    if batch.batch_size != 1:
        raise InputError("contributions take one prompt, got a batch of several")
    n = batch.length
    reads = [Site(0, "resid_pre")]
    for layer in range(spec.n_layers):
        reads += [Site(layer, "z"), Site(layer, "attn_out"), Site(layer, "mlp_out")]
        reads.append(Site(layer, "resid_post"))
    result = run(model, batch, read=reads, embedding=True)
    assert result.output is not None and result.output.embedding is not None

    def read(site: Site) -> Tensor:
        return result[site][0, :n].double()

    bridge = model.bridge
    W_O = bridge.W_O.detach().double()
    parts = read(Site(0, "resid_pre"))[None]  # [part, position, d_model]
    kinds: list[tuple[str, int | None, int | None]] = [("embeddings", None, None)]
    for layer in range(spec.n_layers):
        block = bridge.blocks[layer]
        heads = torch.einsum("phd,hdm->hpm", read(Site(layer, "z")), W_O[layer])
        bias = _bridge_bias(block.attn, "b_O")
        bias = torch.zeros_like(heads[0, 0]) if bias is None else bias
        parts = torch.cat([parts, heads, bias.expand(1, n, -1)])
        kinds += [("head", layer, h) for h in range(heads.shape[0])] + [("bias", layer, None)]
        for name, out in (("ln1", Site(layer, "attn_out")), ("ln2", Site(layer, "resid_post"))):
            gain, norm_bias, eps, rms = _norm_affine(model, getattr(block, name, None), name)
            whole = parts.sum(0)
            parts = _frozen(parts, whole, gain, eps, rms)
            parts = torch.cat([parts, norm_bias.expand(1, n, -1)])
            kinds.append(("norm", layer, None))
            if not _close(parts.sum(0), read(out)):
                raise InputError(
                    f"{spec.name}: layer {layer}'s {name} output is not the norm of the "
                    "residual plus the block's output (not a post-norm block), so the "
                    "sentence embedding cannot be split this way"
                )
            if name == "ln1":
                parts = torch.cat([parts, read(Site(layer, "mlp_out"))[None]])
                kinds.append(("mlp", layer, None))
    pooled = parts.mean(1)  # [part, d_model]: the sentence embedding's parts
    embedding = result.output.embedding[0].double()
    if not _close(pooled.sum(0), embedding):
        raise InputError(
            f"{spec.name}: the parts do not sum to the sentence embedding (is it the mean "
            "of the last block's output?), so it cannot be split this way"
        )
    norm = float(embedding.norm())
    values = pooled @ (embedding / max(norm, 1e-30))
    heads = torch.zeros(spec.n_layers, spec.n_heads, dtype=torch.float64)
    biases = torch.zeros(spec.n_layers, dtype=torch.float64)
    mlps = torch.zeros(spec.n_layers, dtype=torch.float64)
    embeddings = norms = 0.0
    for (kind, layer, head), value in zip(kinds, values.tolist(), strict=True):
        if kind == "head":
            heads[layer, head] = value
        elif kind == "bias":
            biases[layer] = value
        elif kind == "mlp":
            mlps[layer] = value
        elif kind == "norm":
            norms += value
        else:
            embeddings += value
    return EmbeddingAttribution(
        tokens=tuple(batch.tokens[0]),
        heads=heads,
        attention_bias=biases,
        mlps=mlps,
        embeddings=embeddings,
        norm_biases=norms,
        norm=norm,
    )

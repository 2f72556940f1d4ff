"""Per-prompt metrics on model outputs, for head ablation, gating and patching
(docs/methods.md §2.6): the one metric vocabulary of headscope.

A metric maps one forward's `(ModelOutput, TokenBatch)` to one value per
prompt, `[batch]`, so that reports can put confidence intervals on it;
analyses aggregate with the mean. Built-in metrics:

- `next_token_loss(targets=...)`: mean next-token cross-entropy (nats) over the
  target tokens of each prompt (causal LMs; lower is better).
- `logit_difference(answer, wrong)`: logit(answer) − logit(wrong) at each
  prompt's last real token (higher is better).
- `embedding_cosine()`: cosine between the mean-pooled sentence embedding and
  the unablated model's embedding of the same prompt (encoders such as minilm;
  1 on the clean model, higher is better).
- `paraphrase_cosine()`: cosine between the sentence embeddings of paraphrase
  pairs, prompts given as [a_0, b_0, a_1, b_1, ...] (higher is better).
- `class_logit(label)`, `accuracy(label)`: an image classifier's logit of the
  labelled class, and whether its top class is the label (1 or 0); the
  logits are `[batch, class]` (higher is better).

`VOCABULARY` defines each built-in metric once: its name, which way is better,
its unit and what it needs; the dashboard, the report and the notebooks all
read it (the report's older spellings `logit-diff` and `embedding` are accepted
as aliases). Any callable `(ModelOutput, TokenBatch) -> Tensor[batch]` is a
metric too. A
metric that needs the LM head (loss, logit difference) on a model whose
`spec.has_lm_head` is False raises InputError: its logits mean nothing.

Metrics are row-wise: analyses evaluate many interventions in one forward by
repeating prompts, so a metric sees a batch whose rows are copies of the
original prompts. Per-prompt data (answer ids, target masks, clean embeddings)
lives in `Metric.per_prompt` and is gathered with `rows` (the original prompt
index of every evaluated row); a plain callable must compute each row from that
row alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from headscope.errors import InputError
from headscope.models.induction_data import RepeatLayout
from headscope.models.loading import HeadscopeModel, ModelOutput
from headscope.models.tokens import TokenBatch
from headscope.probes.run import run

MetricFunction = Callable[..., Tensor]
Direction = Literal["minimize", "maximize"]
MetricName = Literal[
    "loss", "logit_diff", "embedding_cosine", "paraphrase_cosine", "class_logit", "accuracy"
]


@dataclass(frozen=True)
class MetricInfo:
    """What a built-in metric measures: `direction` ("minimize": lower is
    better), `unit`, a one-line `description`, and whether it needs a trained
    LM head or the sentence embedding."""

    name: str
    direction: Direction
    unit: str
    description: str
    needs_lm_head: bool = False
    needs_embedding: bool = False

    @property
    def better(self) -> str:
        return "lower is better" if self.direction == "minimize" else "higher is better"


VOCABULARY: dict[str, MetricInfo] = {
    info.name: info
    for info in (
        MetricInfo(
            "loss",
            "minimize",
            "nats",
            "mean next-token cross-entropy over the target tokens",
            needs_lm_head=True,
        ),
        MetricInfo(
            "logit_diff",
            "maximize",
            "logit",
            "logit(answer) − logit(wrong) at the last prompt token",
            needs_lm_head=True,
        ),
        MetricInfo(
            "embedding_cosine",
            "maximize",
            "cosine",
            "cosine to the unablated sentence embedding",
            needs_embedding=True,
        ),
        MetricInfo(
            "paraphrase_cosine",
            "maximize",
            "cosine",
            "cosine between the sentence embeddings of paraphrase pairs",
            needs_embedding=True,
        ),
        MetricInfo(
            "class_logit",
            "maximize",
            "logit",
            "logit of the labelled class (image classifier)",
            needs_lm_head=True,
        ),
        MetricInfo(
            "accuracy",
            "maximize",
            "fraction",
            "1 when the top class is the labelled class, else 0 (image classifier)",
            needs_lm_head=True,
        ),
    )
}
METRIC_NAMES: tuple[str, ...] = tuple(VOCABULARY)
#: Older spellings (headscope report 0.1) and the names they stand for.
ALIASES: dict[str, str] = {"logit-diff": "logit_diff", "embedding": "embedding_cosine"}


def metric_info(name: str) -> MetricInfo:
    """The vocabulary entry of `name` (or of its alias); InputError naming the choices."""
    canonical = ALIASES.get(name, name)
    if canonical not in VOCABULARY:
        raise InputError(f"unknown metric {name!r}; choose from {', '.join(METRIC_NAMES)}")
    return VOCABULARY[canonical]


def default_metric(has_lm_head: bool) -> str:
    """The metric a page or report uses unless told otherwise: the loss for a
    model with a trained LM head, the embedding cosine for an encoder."""
    return "loss" if has_lm_head else "embedding_cosine"


@dataclass(frozen=True, eq=False)
class Metric:
    """A per-prompt metric: `function(output, batch, **per_prompt_rows) -> [batch]`.

    `direction` says which way is better ("minimize" for a loss); `objective`
    turns the value into a quantity to minimize (what gating fits).
    `per_prompt` holds tensors indexed by prompt on their first dim; `prepare`,
    when set, computes more of them from the clean model once the prompts are
    known (e.g. the unablated embedding). `group` > 1 means prompts come in
    consecutive groups that must be evaluated together (paraphrase pairs).
    """

    name: str
    function: MetricFunction
    direction: Direction = "minimize"
    needs_lm_head: bool = False
    needs_embedding: bool = False
    per_prompt: Mapping[str, Tensor] = field(default_factory=dict)
    prepare: Callable[[HeadscopeModel, TokenBatch], dict[str, Tensor]] | None = None
    group: int = 1

    def __call__(
        self, output: ModelOutput, batch: TokenBatch, rows: Int[Tensor, " row"] | None = None
    ) -> Float[Tensor, " row"]:
        """Values per row of `batch`; `rows[i]` is the original prompt of row i
        (None: the batch is the original prompts, in order)."""
        data = {
            key: (value if rows is None else value[rows.to(value.device)])
            for key, value in self.per_prompt.items()
        }
        values = self.function(output, batch, **data)
        if not isinstance(values, Tensor):
            values = torch.as_tensor(values)
        values = values.reshape(-1) if values.dim() != 1 else values
        if values.numel() != batch.batch_size:
            raise InputError(
                f"metric {self.name!r} returned {values.numel()} values for "
                f"{batch.batch_size} prompts; a metric must return one value per prompt"
            )
        return values

    def objective(
        self, output: ModelOutput, batch: TokenBatch, rows: Int[Tensor, " row"] | None = None
    ) -> Float[Tensor, " row"]:
        """The value turned into a quantity to minimize (negated when higher is better)."""
        values = self(output, batch, rows)
        return values if self.direction == "minimize" else -values

    @property
    def sign(self) -> float:
        """+1 when lower is better, −1 when higher is better: `sign·(value −
        reference)` is how much worse `value` is (positive = harm)."""
        return 1.0 if self.direction == "minimize" else -1.0


MetricLike = str | Metric | Callable[[ModelOutput, TokenBatch], Tensor]


# -- built-in metric functions ------------------------------------------------------------------


def _at_least_float32(tensor: Tensor) -> Tensor:
    """fp16/bf16 → fp32 for a stable log-softmax; fp64 stays fp64 (finite differences)."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def _token_nll(
    logits: Float[Tensor, "batch position vocab"], labels: Int[Tensor, "batch position"]
) -> Float[Tensor, "batch position"]:
    """NLL of token q+1 given positions ≤ q, at index q+1 (index 0 is 0: nothing predicts it)."""
    logprobs = _at_least_float32(logits[:, :-1]).log_softmax(-1)
    nll = -logprobs.gather(-1, labels[:, 1:, None].to(logits.device))[..., 0]
    return F.pad(nll, (1, 0))


def _loss_function(
    output: ModelOutput,
    batch: TokenBatch,
    targets: Tensor | None = None,
    labels: Tensor | None = None,
) -> Tensor:
    device = output.logits.device
    ids = batch.ids if labels is None else labels
    nll = _token_nll(output.logits, ids.to(device))
    mask = batch.attention_mask.to(device).clone()
    mask[:, 0] = False  # the first token has no prediction
    if targets is not None:
        mask &= targets.to(device)
    weights = mask.to(nll.dtype)
    return (nll * weights).sum(1) / weights.sum(1).clamp_min(1)


def _last_positions(batch: TokenBatch, device: torch.device) -> Tensor:
    return torch.tensor(batch.lengths, device=device) - 1


def _logit_difference_function(
    output: ModelOutput, batch: TokenBatch, answer: Tensor, wrong: Tensor
) -> Tensor:
    logits = output.logits
    rows = torch.arange(logits.shape[0], device=logits.device)
    last = _at_least_float32(logits[rows, _last_positions(batch, logits.device)])
    answer, wrong = answer.to(logits.device), wrong.to(logits.device)
    return last.gather(-1, answer[:, None])[:, 0] - last.gather(-1, wrong[:, None])[:, 0]


def _require_embedding(output: ModelOutput, name: str) -> Tensor:
    if output.embedding is None:
        raise InputError(f"metric {name!r} needs the sentence embedding (embedding=True)")
    return _at_least_float32(output.embedding)


def _embedding_cosine_function(
    output: ModelOutput, batch: TokenBatch, clean_embedding: Tensor
) -> Tensor:
    embedding = _require_embedding(output, "embedding_cosine")
    return F.cosine_similarity(embedding, clean_embedding.to(embedding), dim=-1)


def _paraphrase_cosine_function(output: ModelOutput, batch: TokenBatch) -> Tensor:
    embedding = _require_embedding(output, "paraphrase_cosine")
    if embedding.shape[0] % 2:
        raise InputError("paraphrase_cosine needs an even number of prompts: [a_0, b_0, a_1, ...]")
    pairs = embedding.reshape(-1, 2, embedding.shape[-1])
    # One value per pair, given to both of its prompts (the mean over prompts
    # is the mean over pairs).
    return F.cosine_similarity(pairs[:, 0], pairs[:, 1], dim=-1).repeat_interleave(2)


def _class_logits(output: ModelOutput, name: str) -> Tensor:
    logits = output.logits
    if logits.dim() != 2:
        raise InputError(
            f"metric {name!r} needs an image classifier's logits [batch, class], got shape "
            f"{list(logits.shape)}"
        )
    return _at_least_float32(logits)


def _class_logit_function(output: ModelOutput, batch: TokenBatch, label: Tensor) -> Tensor:
    logits = _class_logits(output, "class_logit")
    return logits.gather(-1, label.to(logits.device)[:, None])[:, 0]


def _accuracy_function(output: ModelOutput, batch: TokenBatch, label: Tensor) -> Tensor:
    logits = _class_logits(output, "accuracy")
    return (logits.argmax(-1) == label.to(logits.device)).to(logits.dtype)


# -- builders -------------------------------------------------------------------------------------


def _builtin(name: str, function: MetricFunction, **options: Any) -> Metric:
    info = VOCABULARY[name]
    return Metric(
        name,
        function,
        info.direction,
        needs_lm_head=info.needs_lm_head,
        needs_embedding=info.needs_embedding,
        **options,
    )


def next_token_loss(
    targets: Bool[Tensor, "batch position"] | None = None,
    *,
    labels: Int[Tensor, "batch position"] | None = None,
) -> Metric:
    """Mean next-token cross-entropy (nats) per prompt over its target tokens.

    `targets[b, q]` True marks token q of prompt b as a target: the loss of
    predicting it from positions < q counts (default: every real token after
    the first). `labels` replaces the tokens to score (default: the prompt's own
    ids), e.g. to score the clean continuation on a corrupted input. Padding
    never counts. Lower is better. Needs a trained LM head.
    """
    per_prompt: dict[str, Tensor] = {}
    if targets is not None:
        if not isinstance(targets, Tensor) or targets.dim() != 2:
            raise InputError("targets must be a bool tensor [batch, position]")
        per_prompt["targets"] = targets.bool()
    if labels is not None:
        if not isinstance(labels, Tensor) or labels.dim() != 2 or labels.is_floating_point():
            raise InputError("labels must be an integer tensor [batch, position]")
        per_prompt["labels"] = labels.long()
    return _builtin("loss", _loss_function, per_prompt=per_prompt)


def _token_ids(values: int | Sequence[int] | Tensor, name: str) -> Tensor:
    ids = torch.as_tensor(values)
    if ids.is_floating_point() or ids.dim() > 1:
        raise InputError(f"{name} must be a token id or a list of token ids, one per prompt")
    return ids.long().reshape(-1)


def logit_difference(
    answer: int | Sequence[int] | Int[Tensor, " batch"],
    wrong: int | Sequence[int] | Int[Tensor, " batch"],
) -> Metric:
    """logit(answer) − logit(wrong) at each prompt's last real token (raw logits,
    before softmax). `answer`, `wrong`: one token id for all prompts or one per
    prompt. Higher is better. Needs a trained LM head."""
    answer_ids, wrong_ids = _token_ids(answer, "answer"), _token_ids(wrong, "wrong")
    return _builtin(
        "logit_diff",
        _logit_difference_function,
        per_prompt={"answer": answer_ids, "wrong": wrong_ids},
    )


@torch.no_grad()
def _clean_embedding(model: HeadscopeModel, batch: TokenBatch) -> dict[str, Tensor]:
    return {"clean_embedding": run(model, batch, embedding=True).output.embedding.detach()}


def embedding_cosine() -> Metric:
    """Cosine between each prompt's mean-pooled sentence embedding and the
    unablated model's embedding of the same prompt: 1 on the clean model,
    lower when an intervention moves the embedding. Higher is better. Works on
    encoders without an LM head (minilm). The clean embeddings are computed
    once, when the metric is resolved for a batch."""
    return _builtin("embedding_cosine", _embedding_cosine_function, prepare=_clean_embedding)


def paraphrase_cosine() -> Metric:
    """Cosine similarity between the mean-pooled sentence embeddings of
    paraphrase pairs; prompts are [a_0, b_0, a_1, b_1, ...] and each pair's
    cosine is reported on both of its prompts. Higher is better."""
    return _builtin("paraphrase_cosine", _paraphrase_cosine_function, group=2)


def class_logit(label: int | Sequence[int] | Int[Tensor, " batch"]) -> Metric:
    """An image classifier's logit (before softmax) of class `label` (one for all
    images or one per image). Higher is better. Needs a trained classifier."""
    labels = {"label": _token_ids(label, "label")}
    return _builtin("class_logit", _class_logit_function, per_prompt=labels)


def accuracy(label: int | Sequence[int] | Int[Tensor, " batch"]) -> Metric:
    """1 where an image classifier's top class is `label`, else 0 (its mean over
    images is the accuracy). Higher is better. Piecewise constant: its gradient
    is zero, so gradient methods and gating say nothing with it."""
    labels = {"label": _token_ids(label, "label")}
    return _builtin("accuracy", _accuracy_function, per_prompt=labels)


def custom_metric(
    function: Callable[[ModelOutput, TokenBatch], Tensor],
    *,
    direction: Direction = "minimize",
    needs_embedding: bool = False,
    name: str | None = None,
) -> Metric:
    """Wrap a callable `(ModelOutput, TokenBatch) -> [batch]`. It must compute
    each row from that row alone (analyses evaluate repeated prompts)."""
    if not callable(function):
        raise InputError(f"a metric must be callable, got {type(function).__name__}")
    label = name or getattr(function, "__name__", "custom")
    return Metric(
        label,
        lambda output, batch: function(output, batch),
        direction,
        needs_embedding=needs_embedding,
    )


_BUILDERS: dict[str, Callable[..., Metric]] = {
    "loss": next_token_loss,
    "logit_diff": logit_difference,
    "embedding_cosine": embedding_cosine,
    "paraphrase_cosine": paraphrase_cosine,
    "class_logit": class_logit,
    "accuracy": accuracy,
}


def resolve_metric(
    model: HeadscopeModel,
    metric: MetricLike,
    batch: TokenBatch | None = None,
    **kwargs: Any,
) -> Metric:
    """Turn a metric name, `Metric` or callable into a `Metric` checked against
    the model and, when given, bound to the prompts in `batch`.

    A name takes its builder's arguments as `kwargs` (`resolve_metric(model,
    "logit_diff", batch, answer=..., wrong=...)`). A plain callable is treated
    as a quantity to minimize and gets the sentence embedding when the model
    has no LM head. Raises InputError for a loss or logit difference on a
    model without a trained LM head, for per-prompt data whose length differs
    from the batch, and for prompts with no target token.
    """
    if isinstance(metric, str):
        name = metric_info(metric).name
        try:
            resolved = _BUILDERS[name](**kwargs)
        except TypeError as error:
            raise InputError(f"metric {metric!r}: {error}") from None
    elif isinstance(metric, Metric):
        if kwargs:
            raise InputError("metric arguments go to the builder, not to a built Metric")
        resolved = metric
    elif callable(metric):
        resolved = custom_metric(metric, needs_embedding=not model.spec.has_lm_head)
    else:
        raise InputError(f"a metric must be a name, a Metric or a callable, got {metric!r}")
    if resolved.needs_lm_head and not model.spec.has_lm_head:
        raise InputError(
            f"metric {resolved.name!r} needs a trained LM head, and {model.spec.name} has "
            "none (its logits mean nothing); use embedding_cosine, paraphrase_cosine or "
            "a callable on the embedding"
        )
    if batch is None:
        return resolved
    return _bind(model, resolved, batch)


def _bind(model: HeadscopeModel, metric: Metric, batch: TokenBatch) -> Metric:
    size = batch.batch_size
    if metric.group > 1 and size % metric.group:
        raise InputError(
            f"metric {metric.name!r} takes prompts in groups of {metric.group}; got {size} prompts"
        )
    data = dict(metric.per_prompt)
    for key, value in list(data.items()):
        if value.dim() == 1 and value.numel() == 1 and size > 1:
            data[key] = value.expand(size).clone()  # one id for every prompt
        elif value.shape[0] != size:
            raise InputError(
                f"metric {metric.name!r}: {key} has {value.shape[0]} rows for {size} prompts"
            )
    for key in ("targets", "labels"):
        if key in data and tuple(data[key].shape) != tuple(batch.ids.shape):
            raise InputError(
                f"metric {metric.name!r}: {key} has shape {list(data[key].shape)}, the "
                f"tokenized prompts have shape {list(batch.ids.shape)} [batch, position]"
            )
    if "targets" in data:
        counted = data["targets"] & batch.attention_mask
        counted[:, 0] = False
        empty = (~counted.any(1)).nonzero().flatten().tolist()
        if empty:
            raise InputError(f"metric {metric.name!r}: prompts {empty} have no target token")
    for key in ("answer", "wrong"):
        if key in data and (int(data[key].min()) < 0 or int(data[key].max()) >= model.spec.d_vocab):
            raise InputError(f"{key} token ids must lie in [0, {model.spec.d_vocab})")
    label = data.get("label")
    if label is not None and (int(label.min()) < 0 or int(label.max()) >= model.spec.d_vocab):
        raise InputError(f"class labels must lie in [0, {model.spec.d_vocab})")
    if metric.prepare is not None:
        data.update(metric.prepare(model, batch))
    return replace(metric, per_prompt=data, prepare=None)


def evaluate_metric(
    model: HeadscopeModel, metric: MetricLike, batch: TokenBatch, **kwargs: Any
) -> Float[Tensor, " batch"]:
    """The metric on the model as it runs now, one value per prompt (no gradients):
    inside a `gate_heads` scope the gates apply, outside it the model is unmodified."""
    resolved = resolve_metric(model, metric, batch, **kwargs)
    with torch.no_grad():
        output = run(model, batch, embedding=resolved.needs_embedding).output
    return resolved(output, batch)


def second_copy_targets(
    layout: RepeatLayout, batch: int, *, length: int | None = None
) -> Bool[Tensor, "batch position"]:
    """Targets r_2..r_T of the second copy in `[BOS?, prefix, r_1..r_T, r_1..r_T]`
    (`induction_data.repeated_random_batch`): the tokens only an induction
    circuit can predict (r_1 of the second copy follows r_T, which is new)."""
    width = layout.length if length is None else length
    mask = torch.zeros(batch, width, dtype=torch.bool)
    mask[:, layout.second_start + 1 : layout.second_start + layout.repeat_length] = True
    return mask


def first_copy_targets(
    layout: RepeatLayout, batch: int, *, length: int | None = None
) -> Bool[Tensor, "batch position"]:
    """Targets r_2..r_T of the first copy: random tokens, chance level (log V) for
    any model."""
    width = layout.length if length is None else length
    mask = torch.zeros(batch, width, dtype=torch.bool)
    mask[:, layout.first_start + 1 : layout.second_start] = True
    return mask

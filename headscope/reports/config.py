"""ReportConfig: everything that determines a report's numbers (and so its shard hash)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from headscope.errors import InputError
from headscope.experiments.metrics import ALIASES
from headscope.experiments.scoring import METHODS, SCORING_METRICS
from headscope.experiments.targets import TARGET_RULES

METRICS = SCORING_METRICS

Metric = Literal["loss", "logit_diff", "embedding_cosine"]


@dataclass(frozen=True)
class ReportConfig:
    """What to compute. `metric` and `target` (which tokens the loss scores) as
    in `experiments.score_heads`. `shard_size` prompts per checkpointed shard; CHG is fit
    once per shard (`seeds` seeds, `chg_steps` Adam steps per phase); prompts
    longer than the model's context are rejected or truncated (`on_long`).
    `device` and `dtype` are passed to `load_model` (cpu/cuda/cuda:N/mps;
    float32/bfloat16/float16); both are part of the job's identity."""

    model: str
    prompts: str
    methods: tuple[str, ...] = METHODS
    metric: Metric = "loss"
    target: str = "auto"
    shard_size: int = 8
    seeds: int = 5
    chg_steps: int = 100
    on_long: Literal["reject", "truncate"] = "reject"
    on_bad_line: Literal["fail", "skip"] = "fail"
    device: str = "cpu"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise InputError(
                f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}"
                if unknown
                else "no methods given"
            )
        # One vocabulary: older spellings (logit-diff, embedding) name the same metrics.
        object.__setattr__(self, "metric", ALIASES.get(self.metric, self.metric))
        if self.metric not in METRICS:
            raise InputError(f"unknown metric {self.metric!r}; choose from {', '.join(METRICS)}")
        if self.target not in TARGET_RULES:
            raise InputError(
                f"unknown target {self.target!r}; choose from {', '.join(TARGET_RULES)}"
            )
        if self.shard_size < 1 or self.seeds < 1 or self.chg_steps < 1:
            raise InputError("shard size, seeds and CHG steps must be positive")
        if self.on_long not in ("reject", "truncate"):
            raise InputError("on_long must be 'reject' or 'truncate'")
        if self.on_bad_line not in ("fail", "skip"):
            raise InputError("on_bad_line must be 'fail' or 'skip'")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["methods"] = list(self.methods)
        return data

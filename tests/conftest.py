"""Test-wide guards: no network (HF_HUB_OFFLINE, loopback-only sockets), shared models."""

from __future__ import annotations

import ipaddress
import os
import socket

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from dataclasses import dataclass

import pytest
import torch
from tiny_models import ARCHES, build_tiny

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _loopback_only(address) -> None:
    if isinstance(address, tuple) and address:
        host = address[0]
        try:
            if ipaddress.ip_address(host).is_loopback:
                return
        except ValueError:
            if host == "localhost":
                return
        raise OSError(f"tests may not open non-loopback connections (tried {address!r})")


def _guarded_connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _loopback_only(address)
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _loopback_only(address)
    return _real_connect_ex(self, address)


socket.socket.connect = _guarded_connect
socket.socket.connect_ex = _guarded_connect_ex


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, object]:
    """Directories holding tiny GPT-2, Llama (GQA) and BERT checkpoints."""
    root = tmp_path_factory.mktemp("tiny")
    return {arch: build_tiny(arch, root / arch) for arch in ARCHES}


@pytest.fixture(scope="session")
def tiny_models(tiny_dirs):
    import headscope as hs

    return {arch: hs.load_model(path) for arch, path in tiny_dirs.items()}


@pytest.fixture(scope="session")
def toy_model():
    import headscope as hs

    return hs.load_model("toy-induction")


@pytest.fixture(scope="session")
def minilm_model():
    import headscope as hs

    return hs.load_model("minilm")


@pytest.fixture(scope="session")
def toy_session(toy_model):
    from headscope.dashboard.session import ModelSession

    return ModelSession(toy_model)


@pytest.fixture(scope="session")
def minilm_session(minilm_model):
    from headscope.dashboard.session import ModelSession

    return ModelSession(minilm_model)


@dataclass(frozen=True)
class Circuit:
    previous_head: tuple[int, int]
    induction_head: tuple[int, int]
    induction_heads: frozenset[tuple[int, int]]

    @property
    def heads(self) -> set[tuple[int, int]]:
        return {self.previous_head, self.induction_head}


@pytest.fixture(scope="session")
def circuit(toy_model) -> Circuit:
    """The previous-token head and the induction head(s), from the taxonomy
    scores of 64 repeated random sequences (the model card's evaluation set)."""
    import headscope as hs
    from headscope.analyses.taxonomy import head_scores
    from headscope.models.induction_data import repeated_random_batch
    from headscope.models.toy_training import BOS_ID, WORD_RANGE

    probe, _ = repeated_random_batch(
        64, 20, vocab=WORD_RANGE, bos_id=BOS_ID, generator=torch.Generator().manual_seed(1234)
    )
    scores = head_scores(hs.capture(toy_model, probe))
    previous, induction = scores["previous_token"], scores["induction"]
    n_heads = previous.shape[1]

    def best(grid: torch.Tensor) -> tuple[int, int]:
        index = int(grid.flatten().argmax())
        return index // n_heads, index % n_heads

    assert previous.max() > 0.8 and induction.max() > 0.8
    heads = frozenset((int(a), int(b)) for a, b in (induction > 0.8).nonzero().tolist())
    return Circuit(best(previous), best(induction), heads)

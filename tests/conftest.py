"""Test-wide guards: no network (HF_HUB_OFFLINE, loopback-only sockets), shared models."""

from __future__ import annotations

import ipaddress
import os
import socket

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
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

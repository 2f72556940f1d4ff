"""The run primitive and the Site vocabulary: every component on every family,
edits before reads, head-level edits against whole-layer gates, early stop,
graph-keeping reads, scoped edits, clear errors; and no hook-point name outside
probes/sites.py."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from headscope.errors import InputError
from headscope.probes.interventions import gate_heads
from headscope.probes.run import editing, run
from headscope.probes.sites import COMPONENTS, MODEL_LEVEL, Site, missing

PROMPT = "t5 t6 t7 t8 t9"
PACKAGE = Path(__file__).resolve().parents[2] / "headscope"


def _all_sites(n_layers: int) -> list[Site]:
    sites = []
    for component in COMPONENTS:
        if component in MODEL_LEVEL:
            sites.append(Site(None, component))
        else:
            sites.extend(Site(layer, component) for layer in range(n_layers))
    return sites


def _expected_shape(site: Site, spec, batch: int, n: int) -> tuple[int, ...]:
    if site.component in ("q", "z"):
        return (batch, n, spec.n_heads, spec.d_head)
    if site.component in ("k", "v"):
        return (batch, n, spec.n_kv_heads, spec.d_head)
    if site.component in ("pattern", "scores"):
        return (batch, spec.n_heads, n, n)
    return (batch, n, spec.d_model)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
def test_every_site_component_exists_on_each_family_with_its_documented_shape(tiny_models, arch):
    model = tiny_models[arch]
    sites = _all_sites(model.spec.n_layers)
    assert missing(model, sites) == []
    batch = model.tokenize(PROMPT)
    result = run(model, batch, read=sites)
    for site in sites:
        shape = _expected_shape(site, model.spec, 1, batch.length)
        assert tuple(result[site].shape) == shape, site
    for layer in range(model.spec.n_layers):
        pattern = result[Site(layer, "pattern")]
        assert torch.allclose(pattern.sum(-1), torch.ones(()), atol=1e-5)


def test_the_built_in_models_expose_every_site(toy_model, minilm_model):
    for model in (toy_model, minilm_model):
        assert missing(model, _all_sites(model.spec.n_layers)) == []


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_head_site_edit_equals_a_zero_gate(tiny_models, arch):
    model = tiny_models[arch]
    batch = model.tokenize(PROMPT)
    edited = run(model, batch, edit={Site(1, "z", head=2): torch.zeros_like}).output.logits
    gates = torch.ones(model.spec.n_layers, model.spec.n_heads)
    gates[1, 2] = 0
    with gate_heads(model, gates):
        gated = run(model, batch).output.logits
    clean = run(model, batch).output.logits
    assert torch.allclose(edited, gated, atol=1e-6)
    assert not torch.allclose(edited, clean, atol=1e-4)


def test_edits_run_before_reads_and_only_touch_their_head(tiny_models):
    model = tiny_models["llama"]
    batch = model.tokenize(PROMPT)
    clean = run(model, batch, read=[Site(0, "z")])[Site(0, "z")]
    result = run(
        model,
        batch,
        read=[Site(0, "z"), Site(0, "z", head=1)],
        edit={Site(0, "z", head=1): lambda z: z + 1.0},
    )
    assert torch.allclose(result[Site(0, "z", head=1)], clean[:, :, 1] + 1.0)
    whole = result[Site(0, "z")]
    kept = [h for h in range(model.spec.n_heads) if h != 1]
    assert torch.equal(whole[:, :, kept], clean[:, :, kept])


def test_stop_after_ends_the_forward_and_keeps_what_was_read(tiny_models):
    model = tiny_models["gpt2"]
    batch = model.tokenize(PROMPT)
    stopped = run(model, batch, read=[Site(0, "pattern")], stop_after=Site(0, "pattern"))
    assert stopped.output is None
    full = run(model, batch, read=[Site(0, "pattern")])
    assert torch.equal(stopped[Site(0, "pattern")], full[Site(0, "pattern")])
    with pytest.raises(RuntimeError, match="did not fire"):
        run(model, batch, read=[Site(1, "z")], stop_after=Site(0, "pattern"))


def test_keep_graph_reads_carry_gradients(tiny_models):
    model = tiny_models["gpt2"]
    batch = model.tokenize(PROMPT)
    with torch.enable_grad():
        result = run(model, batch, read=[Site(0, "z")], keep_graph=True)
        z = result[Site(0, "z")]
        (gradient,) = torch.autograd.grad(result.output.logits[0, -1, 3], z)
    assert z.requires_grad and gradient.shape == z.shape and gradient.abs().sum() > 0
    detached = run(model, batch, read=[Site(0, "z")])[Site(0, "z")]
    assert not detached.requires_grad


def test_scoped_edits_apply_inside_the_block_only(tiny_models):
    model = tiny_models["llama"]
    batch = model.tokenize(PROMPT)
    clean = run(model, batch).output.logits
    with editing(model, {Site(0, "z"): torch.zeros_like}):
        inside = run(model, batch).output.logits
    after = run(model, batch).output.logits
    assert not torch.allclose(inside, clean, atol=1e-4)
    assert torch.equal(after, clean)


def test_bad_sites_and_edits_are_refused_with_one_line(tiny_models):
    model = tiny_models["gpt2"]
    batch = model.tokenize(PROMPT)
    with pytest.raises(ValueError, match="unknown component"):
        Site(0, "mlp_hidden")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="model-level"):
        Site(0, "embed")
    with pytest.raises(ValueError, match="no head axis"):
        Site(0, "attn_out", head=1)
    with pytest.raises(InputError, match="out of range"):
        run(model, batch, read=[Site(7, "z")])
    with pytest.raises(InputError, match="returned"):
        run(model, batch, edit={Site(0, "z"): lambda z: z[:, :1]})
    with pytest.raises(InputError, match="head 9 is out of range"):
        run(model, batch, read=[Site(0, "z", head=9)])


def _hook_names(path: Path) -> list[str]:
    """Identifiers and string constants (docstrings excepted) containing 'hook_'."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    found = []
    for node in ast.walk(tree):
        text = None
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = None if id(node) in docstrings else node.value
        elif isinstance(node, ast.Attribute):
            text = node.attr
        elif isinstance(node, ast.Name):
            text = node.id
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            text = node.name
        elif isinstance(node, ast.arg):
            text = node.arg
        if text and "hook_" in text:
            found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {text}")
    return found


def test_hook_point_names_live_only_in_probes_sites():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "sites.py" and path.parent.name == "probes":
            continue
        offenders.extend(_hook_names(path))
    assert offenders == []
    # ... and the check can fail: sites.py itself is full of them.
    assert _hook_names(PACKAGE / "probes" / "sites.py")


def test_sites_may_come_from_a_generator(tiny_models):
    model = tiny_models["gpt2"]
    batch = model.tokenize(PROMPT)
    result = run(model, batch, read=(Site(layer, "z") for layer in range(2)))
    assert set(result.activations) == {Site(0, "z"), Site(1, "z")}

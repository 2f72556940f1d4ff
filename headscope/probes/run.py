"""One run primitive: typed sites in, activations out, edits applied on the way.

    result = run(model, batch, read=[Site(0, "z"), Site(1, "pattern", head=3)],
                 edit={Site(1, "z", head=3): lambda z: 0 * z})
    result.output.logits          # [batch, position, vocab]
    result[Site(0, "z")]          # [batch, position, head, d_head]

This module is the only place where a `Site` becomes a hook: every probe,
intervention and experiment reads and writes the model through `run` (one
forward) or `editing` (edits that stay on for every forward inside a `with`
block, as `gate_heads` needs). Hooks are removed on exit, also after an
exception.

Order at one hook point: the edits of that point run first, in the order the
mapping gives them; the reads then see the edited value, which is what flows
on through the model. An edit of a head site receives that head's slice and
returns its replacement (the rest of the tensor is kept). Edits must return a
tensor of the shape they received.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from headscope.errors import InputError
from headscope.models.loading import HeadscopeModel, ModelOutput
from headscope.models.tokens import TokenBatch
from headscope.probes.sites import Site, available, point_name

Edit = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class RunResult:
    """What one `run` returns: the model's output (None when the forward stopped
    early at `stop_after`) and the tensor read at each requested site."""

    output: ModelOutput | None
    activations: Mapping[Site, Tensor] = field(default_factory=dict)

    def __getitem__(self, site: Site) -> Tensor:
        return self.activations[site]


class _Stop(Exception):  # noqa: N818 (a control-flow signal, not an error)
    """Raised at `stop_after` once everything asked for has been read."""


def _select_head(tensor: Tensor, site: Site) -> Tensor:
    if site.head is None:
        return tensor
    axis = site.head_axis
    assert axis is not None  # Site validates that a head goes with a head axis
    if site.head >= tensor.shape[axis]:
        raise InputError(
            f"{site}: head {site.head} is out of range (the tensor has "
            f"{tensor.shape[axis]} heads on axis {axis})"
        )
    return tensor.select(axis, site.head)


def _apply_edit(tensor: Tensor, site: Site, edit: Edit) -> Tensor:
    if site.head is None:
        edited = edit(tensor)
        target_shape = tensor.shape
    else:
        part = _select_head(tensor, site)
        edited = edit(part)
        target_shape = part.shape
    if not isinstance(edited, Tensor) or edited.shape != target_shape:
        got = tuple(edited.shape) if isinstance(edited, Tensor) else type(edited).__name__
        raise InputError(f"the edit of {site} returned {got}, expected {tuple(target_shape)}")
    if site.head is None:
        return edited
    index: list[Any] = [slice(None)] * tensor.dim()
    index[site.head_axis] = site.head  # type: ignore[index]
    out = tensor.clone()
    out[tuple(index)] = edited.to(out.dtype)
    return out


def _check_sites(model: HeadscopeModel, sites: Iterable[Site]) -> None:
    n_layers = model.spec.n_layers
    for site in sites:
        if not isinstance(site, Site):
            raise InputError(f"expected a Site, got {site!r}")
        if site.layer is not None and site.layer >= n_layers:
            raise InputError(f"{site}: layer {site.layer} is out of range ({n_layers} layers)")
        if not available(model, site):
            raise InputError(f"{site} is not available on {model.spec.architecture}")


def _hooks(
    model: HeadscopeModel,
    read: Iterable[Site],
    edit: Mapping[Site, Edit],
    store: dict[Site, Tensor],
    keep_graph: bool,
    stop_after: Site | None,
    stopped: list[bool] | None = None,
) -> list[tuple[str, Callable[[Tensor, Any], Tensor]]]:
    """One hook function per hook point: its edits, then its reads, then the stop."""
    read = list(read)
    _check_sites(model, [*read, *edit, *([stop_after] if stop_after else [])])
    points: dict[str, tuple[list[tuple[Site, Edit]], list[Site], bool]] = {}
    for site, fn in edit.items():
        points.setdefault(point_name(site), ([], [], False))[0].append((site, fn))
    for site in read:
        points.setdefault(point_name(site), ([], [], False))[1].append(site)
    if stop_after is not None:
        edits, reads, _ = points.setdefault(point_name(stop_after), ([], [], False))
        points[point_name(stop_after)] = (edits, reads, True)

    def make(edits: list[tuple[Site, Edit]], reads: list[Site], stop: bool):
        def fn(tensor: Tensor, hook: Any) -> Tensor:
            for site, edit_fn in edits:
                tensor = _apply_edit(tensor, site, edit_fn)
            for site in reads:
                value = _select_head(tensor, site)
                store[site] = value if keep_graph else value.detach()
            if stop:
                if stopped is not None:
                    stopped.append(True)
                raise _Stop
            return tensor

        return fn

    return [(point, make(*parts)) for point, parts in points.items()]


def run(
    model: HeadscopeModel,
    batch: TokenBatch,
    *,
    read: Iterable[Site] = (),
    edit: Mapping[Site, Edit] | None = None,
    embedding: bool = False,
    keep_graph: bool = False,
    stop_after: Site | None = None,
) -> RunResult:
    """Run `model` on `batch`, reading the sites in `read` and applying `edit`.

    `read`: sites whose tensors to keep (detached unless `keep_graph`, which
    keeps them in the autograd graph for `torch.autograd.grad`). `edit`: a
    function per site (see the module docstring). `embedding`: also return
    the mean-pooled sentence embedding. `stop_after`: end the forward once
    this site has fired (everything above it cannot change what was read);
    the result's `output` is then None. Gradients follow torch's mode: wrap
    the call in `torch.enable_grad()` / `torch.no_grad()` as needed.
    Memory: the forward's own plus the tensors read.
    """
    read = list(read)  # iterated twice: to build the hooks, then to check they fired
    store: dict[Site, Tensor] = {}
    stopped: list[bool] = []
    hooks = _hooks(model, read, edit or {}, store, keep_graph, stop_after, stopped)
    output = None
    if stop_after is None:
        output = model.forward(batch, embedding=embedding, hooks=hooks)
    else:
        with suppress(_Stop):
            model.forward(batch, hooks=hooks)
        if not stopped:
            raise RuntimeError(f"{stop_after} did not fire during the forward")
    missing = [site for site in read if site not in store]
    if missing:
        raise RuntimeError(f"these sites did not fire during the forward: {missing}")
    return RunResult(output, store)


@contextmanager
def editing(model: HeadscopeModel, edit: Mapping[Site, Edit]) -> Iterator[None]:
    """Apply `edit` to every forward of `model` inside the `with` block."""
    hooks = _hooks(model, (), edit, {}, False, None)
    with model.hooks(hooks):
        yield


def reading(
    model: HeadscopeModel, batch: TokenBatch, sites: Iterable[Site], **options: Any
) -> dict[Site, Tensor]:
    """`run(model, batch, read=sites, **options).activations`, without gradients."""
    with torch.no_grad():
        return dict(run(model, batch, read=sites, **options).activations)

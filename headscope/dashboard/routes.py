"""The dashboard's URLs: which page a path shows, and links that carry the prompt.

Every page takes the prompt from `?prompt=...`, so any view can be shared as a
link, e.g. `/head/1/3?prompt=red%20cat%20red%20cat`; the rest of the view
(gates, selected heads, metric, target) rides along as further parameters,
see `dashboard.state`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, parse_qsl, urlencode


@dataclass(frozen=True)
class Page:
    kind: str
    path: str
    title: str
    description: str


PAGES: tuple[Page, ...] = (
    Page("overview", "/", "Overview", "every head at a glance"),
    Page("head", "/head/0/0", "Head", "one head in detail"),
    Page("flow", "/flow", "Flow", "raw attention, rollout and flow for one token"),
    Page("importance", "/importance", "Importance", "ablation, gradients and CHG"),
    Page("position", "/position", "Position", "sinks and influence by distance"),
    Page("spectral", "/spectral", "Spectral", "QK/OV spectra and composition"),
    Page("playground", "/playground", "Playground", "gate heads, watch the output"),
)
#: Long context: its own text (a file or pasted) up to the model's context, not the prompt box.
LONG = Page("long", "/long", "Long context", "statistics and tiled maps of a long text")
#: Contributions: direct logit attribution, logit lens and the residual contribution graph.
CONTRIBUTIONS = Page(
    "contributions", "/contributions", "Contributions", "what each head and MLP adds to a logit"
)
#: Patching: the prompt box's text as the clean prompt, against a corrupted version.
PATCHING = Page(
    "patching", "/patching", "Patching", "activation and attribution patching, clean vs corrupted"
)
#: Clusters: heads whose maps correlate over a prompt set, checked by ablation (CHAI).
CLUSTERS = Page("clusters", "/clusters", "Clusters", "heads that attend alike, checked by ablation")
#: Dynamics: a built-in checkpoint series over training, and a diff of two checkpoints.
DYNAMICS = Page("dynamics", "/dynamics", "Dynamics", "heads over training checkpoints, and a diff")
#: Retrieval: retrieval, streaming and echo heads on synthetic copy and passkey tasks.
RETRIEVAL = Page("retrieval", "/retrieval", "Retrieval", "retrieval and streaming heads")
#: Vision: one image through a vision transformer; a vision model's landing page.
VISION = Page("vision", "/vision", "Vision", "an image: prediction, rollout from [CLS], heads")
#: The pages a vision model's navigation shows (the others read text prompts).
VISION_KINDS: tuple[str, ...] = ("vision",)
#: Every page, in the navigation's order.
NAV_PAGES: tuple[Page, ...] = (
    *PAGES,
    PATCHING,
    CONTRIBUTIONS,
    CLUSTERS,
    DYNAMICS,
    RETRIEVAL,
    LONG,
    VISION,
)
PAGE_KINDS: tuple[str, ...] = tuple(page.kind for page in NAV_PAGES)


def in_navigation(page: Page, vision: bool) -> bool:
    """Whether the navigation shows `page` for a vision model (`vision`) or a text model."""
    return (page.kind in VISION_KINDS) == vision


_HEAD = re.compile(r"^/head/(\d{1,4})/(\d{1,4})/?$")


@dataclass(frozen=True)
class Route:
    """A parsed path: the page kind (`missing` for unknown paths) and, for
    the head page, the layer and head as written in the URL (not yet checked
    against the model)."""

    kind: str
    layer: int | None = None
    head: int | None = None


#: Paths longer than this are not pages (and are not echoed back in full).
MAX_PATH_CHARS = 2_000
#: Query strings longer than this keep none of their parameters when the prompt changes.
MAX_SEARCH_CHARS = 400_000


def parse_path(pathname: object) -> Route:
    """The route of a path; anything that is not a string (or is huge) is `missing`."""
    if pathname is None:
        pathname = "/"
    if not isinstance(pathname, str) or len(pathname) > MAX_PATH_CHARS:
        return Route("missing")
    path = pathname.rstrip("/") or "/"
    if path == "/":
        return Route("overview")
    match = _HEAD.match(path)
    if match:
        return Route("head", int(match.group(1)), int(match.group(2)))
    if path == "/head":
        return Route("head", 0, 0)
    for page in NAV_PAGES:
        if page.kind != "head" and path == page.path:
            return Route(page.kind)
    return Route("missing")


def prompt_from_search(search: object) -> str | None:
    """The `prompt` query parameter of a URL's search string, if any (None for
    anything that is not a string)."""
    if not search or not isinstance(search, str):
        return None
    values = parse_qs(search.lstrip("?"), keep_blank_values=True).get("prompt")
    return values[0] if values else None


def search_for(prompt: str | None) -> str:
    return f"?{urlencode({'prompt': prompt})}" if prompt else ""


def head_path(layer: int, head: int) -> str:
    return f"/head/{int(layer)}/{int(head)}"


def href(path: str, prompt: str | None) -> str:
    return path + search_for(prompt)


def with_prompt(search: object, prompt: str | None) -> str:
    """`search` with its prompt replaced by `prompt` (removed when None or empty);
    its other parameters (the view state, `dashboard.state`) are kept as they were."""
    kept = []
    if isinstance(search, str) and len(search) <= MAX_SEARCH_CHARS:
        kept = [
            (key, value)
            for key, value in parse_qsl(search.lstrip("?"), keep_blank_values=True)
            if key != "prompt"
        ]
    params = ([("prompt", prompt)] if prompt else []) + kept
    return f"?{urlencode(params)}" if params else ""

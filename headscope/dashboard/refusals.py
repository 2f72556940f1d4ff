"""What the page shows when the prompt box refuses a prompt: the reason; for a
prompt longer than the dashboard takes, a link that keeps its last tokens;
and the previous prompt's results, still on the page, dimmed and marked as
such (`register`: a client-side callback, no round trip).
"""

from __future__ import annotations

import logging
import re

from dash import Dash, Input, Output, dcc, html

from headscope.dashboard import routes
from headscope.dashboard.messages import describe, safe_text
from headscope.dashboard.session import MAX_PROMPT_CHARS, ModelSession
from headscope.errors import HeadscopeError

log = logging.getLogger("headscope.dashboard")
_SURROGATE = re.compile("[\ud800-\udfff]")
#: The class of the refusal message; while it shows, the page content is marked stale.
PROBLEM_CLASS = "hs-prompt-problem"
STALE_CLASS = "hs-stale"
#: How many later token boundaries `keep_last_tokens` tries when the kept text
#: re-tokenizes differently from the prompt's last tokens (a cut inside a word).
_RETRIES = 32


def keep_last_tokens(session: ModelSession, text: str) -> tuple[str, int, int] | None:
    """The end of `text` that fits the dashboard's token limit, cut at a token
    boundary (the tokenizer's character offsets) where the kept text tokenizes
    to exactly the prompt's last tokens: (kept text, its tokens without special
    ones, characters dropped), or None when `text` fits already or nothing can
    be kept. Text beyond the dashboard's character limit is cut first. The
    kept text is tokenized again to check that it fits (special tokens included)."""
    model = session.model
    if model is None or not isinstance(text, str) or _SURROGATE.search(text):
        return None
    cut = len(text) > MAX_PROMPT_CHARS
    tail = text[-MAX_PROMPT_CHARS:] if cut else text
    added = model.added_tokens(tail)
    specials = len(added.prefix) + len(added.suffix)
    budget = session.token_limit - specials
    encoded = model.tokenizer(tail, add_special_tokens=False, return_offsets_mapping=True)
    offsets = encoded["offset_mapping"]
    if budget < 1 or (len(offsets) <= budget and not cut):
        return None
    start = max(0, len(offsets) - budget)
    ids = list(encoded["input_ids"])
    for first in range(start, min(len(offsets), start + _RETRIES + 1)):
        kept = tail[offsets[first][0] :].lstrip()
        if not kept:
            return None
        # A cut inside a word re-tokenizes differently ("##ably" becomes "ably"):
        # move on to the next boundary that keeps the prompt's own last tokens.
        if list(model.tokenizer(kept, add_special_tokens=False)["input_ids"]) != ids[first:]:
            continue
        try:
            session.tokenize(kept)
        except HeadscopeError:
            continue
        return kept, len(ids) - first, len(text) - len(kept)
    return None


def prompt_problem(session: ModelSession, text: object, error: BaseException, search: object):
    """The message for a refused prompt: the reason, that the results below are
    the previous prompt's, and for a long prompt a link (`?prompt=` the kept
    text, the URL's other parameters kept) that keeps its last tokens."""
    children: list = [html.Div(describe(error))]
    try:
        offer = keep_last_tokens(session, text) if isinstance(text, str) else None
    except Exception:  # the offer is a convenience: never lose the reason over it
        log.exception("could not offer to shorten the prompt")
        offer = None
    if offer is not None:
        kept, n, dropped = offer
        children.append(
            html.Div(
                [
                    dcc.Link(
                        f"Keep the last {n} tokens",
                        href=routes.with_prompt(search, kept),
                        id="prompt-truncate",
                        className="hs-alert-action",
                    ),
                    html.Span(
                        f" (drops the first {dropped:,} characters; starts “"
                        f"{safe_text(kept, 60)}”)",
                        className="hs-muted",
                    ),
                ],
                style={"marginTop": "6px"},
            )
        )
    children.append(
        html.Div(
            "The results below are still those of the previous prompt.",
            className="hs-muted",
            style={"marginTop": "4px", "fontSize": "12px"},
        )
    )
    return html.Div(children, className=f"hs-alert hs-alert-error {PROBLEM_CLASS}", role="alert")


def register(app: Dash) -> None:
    """Mark the page content stale while a refusal message shows (client side)."""
    app.clientside_callback(
        """
        function(message) {
            const text = JSON.stringify(message || null);
            return text.indexOf("PROBLEM") >= 0 ? "STALE" : "";
        }
        """.replace("PROBLEM", PROBLEM_CLASS).replace("STALE", STALE_CLASS),
        Output("page-content", "className"),
        Input("model-message", "children"),
    )

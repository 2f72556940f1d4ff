"""The Dash web dashboard.

    from headscope.dashboard import create_app, run_dashboard
    run_dashboard("toy-induction")               # http://127.0.0.1:8050/

Pages (one prompt box and one model drive them all; every URL takes
`?prompt=...`): `/` overview, `/head/<layer>/<head>` head detail, `/flow`,
`/importance`, `/position`, `/spectral`, `/playground`.

Modules: `app` (create_app, run_dashboard), `shell` (header, prompt box,
router), one module per page, `session` / `cache` / `results` (server-side
model, per-prompt LRU cache, memoized analyses), `background` (long jobs),
`inputs` (validation of what the browser sends), `components`, `messages`,
`routes`, `theme`, `examples`.
"""

from __future__ import annotations

__all__ = ["create_app", "run_dashboard"]


def __getattr__(name: str):
    # Lazy: importing the package does not import dash, torch or the models.
    if name in __all__:
        from headscope.dashboard import app

        return getattr(app, name)
    raise AttributeError(f"module 'headscope.dashboard' has no attribute {name!r}")

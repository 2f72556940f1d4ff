"""The dashboard's stylesheet and HTML shell, inlined so the app needs no asset
folder and no network (no CDN fonts or scripts).

`CSS` is the shared headscope stylesheet (`headscope.figures.theme`: colours,
fonts, headings, cards, grids, tables; the report uses it too) followed by the
dashboard's own chrome (header, navigation, prompt bar, buttons, token chips,
controls).
"""

from __future__ import annotations

from headscope.dashboard.export import EXPORT_SCRIPT
from headscope.figures.theme import THEME_CSS

DASHBOARD_CSS = """
* { box-sizing: border-box; }
body { margin: 0; background: var(--hs-bg); }
.hs-header { background: #18202e; color: #fff; padding: 10px 22px 0 22px; }
.hs-header-top { display: flex; align-items: baseline; gap: 16px; flex-wrap: wrap; }
.hs-brand { font-size: 19px; font-weight: 700; letter-spacing: .2px; }
.hs-model { color: #b9c3d3; font-size: 13px; font-family: var(--hs-mono); }
.hs-nav { display: flex; gap: 2px; margin-top: 10px; flex-wrap: wrap; }
.hs-nav a { color: #c9d2e0; text-decoration: none; padding: 8px 14px; border-radius: 6px 6px 0 0;
  font-size: 13px; font-weight: 500; }
.hs-nav a:hover { background: #263043; color: #fff; }
.hs-nav a.hs-active { background: var(--hs-bg); color: var(--hs-ink); }
.hs-promptbar { background: #fff; border-bottom: 1px solid var(--hs-line); padding: 12px 22px;
  display: flex; gap: 12px; align-items: flex-start; }
.hs-promptbar textarea { flex: 1; min-height: 44px; height: 44px; resize: vertical;
  font-family: var(--hs-mono); font-size: 13px; padding: 8px 10px; border: 1px solid #c7cdd8;
  border-radius: 6px; }
.hs-promptbar textarea:focus { outline: 2px solid var(--hs-accent-soft);
  border-color: var(--hs-accent); }
.hs-button { background: var(--hs-accent); color: #fff; border: none; border-radius: 6px;
  padding: 9px 18px; font-size: 13px; font-weight: 600; cursor: pointer; }
.hs-button:disabled { background: #9fb3cc; cursor: default; }
.hs-button-quiet { background: #fff; color: var(--hs-ink); border: 1px solid #c7cdd8; }
.hs-button-quiet:disabled { background: #f2f2f2; color: #9aa3ad; }
.hs-prompt-side { display: flex; flex-direction: column; gap: 4px; min-width: 170px; }
.hs-prompt-info { color: var(--hs-muted); font-size: 12px; }
.hs-main { padding: 16px 22px 40px 22px; max-width: 1500px; margin: 0 auto; }
.hs-alert { border-radius: 6px; padding: 9px 12px; margin: 0 0 12px 0; font-size: 13px;
  white-space: pre-wrap; overflow-wrap: anywhere; }
.hs-alert-error { background: var(--hs-red-soft); color: var(--hs-red); border: 1px solid #f5c2bd; }
.hs-alert-info { background: #eef3fb; color: #1d3a66; border: 1px solid #c9d8ee; }
.hs-alert-warning { background: var(--hs-amber-soft); color: #7a5200; border: 1px solid #f0dca8; }
.hs-tokens { display: flex; flex-wrap: wrap;
  gap: 3px; font-family: var(--hs-mono); font-size: 12px; }
.hs-token { border: 1px solid var(--hs-line); border-radius: 4px; padding: 1px 5px;
  background: #fafbfc; white-space: pre; cursor: default; color: var(--hs-ink);
  font-family: var(--hs-mono); font-size: 12px; }
button.hs-token { cursor: pointer; }
.hs-token-query { outline: 2px solid #d62728; }
.hs-token .hs-index { color: inherit; opacity: .62; font-size: 10px; margin-right: 3px; }
.hs-tchip { cursor: crosshair; }
.hs-tchip.hs-token-query { outline-offset: 1px; }
.hs-controls { display: flex; gap: 18px;
  flex-wrap: wrap; align-items: flex-end; margin-bottom: 8px; }
.hs-control { display: flex; flex-direction: column; gap: 4px; min-width: 140px; }
.hs-control label, .hs-label { font-size: 12px; color: var(--hs-muted); font-weight: 600; }
.hs-picker { display: grid; gap: 3px; }
.hs-picker a, .hs-gate { display: inline-block; text-align: center; font-family: var(--hs-mono);
  font-size: 11px; padding: 4px 0; border-radius: 4px; border: 1px solid var(--hs-line);
  text-decoration: none; color: var(--hs-ink); background: #fff; }
.hs-picker a:hover { background: var(--hs-accent-soft); }
.hs-picker a.hs-current { background: var(--hs-accent);
  color: #fff; border-color: var(--hs-accent); }
.hs-gate { cursor: pointer; min-width: 44px; }
.hs-gate-selected { outline: 2px solid #d62728; }
.hs-progress { display: flex; align-items: center; gap: 10px; margin: 6px 0; }
.hs-progress progress { width: 320px; height: 14px; }
.hs-metric { font-family: var(--hs-mono); font-size: 13px; }
.hs-metric b { font-weight: 650; }
.hs-exact { font-family: var(--hs-mono); font-size: 12px;
  white-space: pre-wrap; color: var(--hs-ink); }
._dash-loading { margin: 20px; color: var(--hs-muted); }
.hs-stale > * { opacity: .35; filter: grayscale(.6); }
.hs-stale::before { content: "Results of the previous prompt (the new one was refused)";
  display: block; margin: 0 0 8px 0; font-size: 12px; font-weight: 600; color: var(--hs-muted); }
.hs-alert-action { color: inherit; font-weight: 650; text-decoration: underline; }
.hs-export { display: flex; justify-content: flex-end; align-items: center; gap: 4px;
  margin-top: 2px; opacity: .55; transition: opacity .15s; }
.hs-panel:hover .hs-export, .hs-export:focus-within { opacity: 1; }
.hs-export-label { font-size: 11px; color: var(--hs-muted); margin-right: 2px; }
.hs-export-button { font-size: 10px; font-weight: 600; padding: 1px 6px; border-radius: 4px;
  border: 1px solid var(--hs-line); background: #fff; color: var(--hs-muted); cursor: pointer;
  font-family: var(--hs-sans); letter-spacing: .3px; }
.hs-export-button:hover { background: var(--hs-accent-soft); color: var(--hs-accent);
  border-color: var(--hs-accent); }
"""

#: Everything the dashboard's page inlines: the shared stylesheet, then the dashboard's own.
CSS = THEME_CSS + DASHBOARD_CSS


def index_string(script: str = "") -> str:
    """Dash's HTML page with the stylesheet, the panels' export script
    (`export.EXPORT_SCRIPT`) and `script` inlined in the head."""
    return INDEX_STRING.replace(
        "<!--headscope-script-->", f"<script>{EXPORT_SCRIPT}</script><script>{script}</script>"
    )


INDEX_STRING = (
    """<!DOCTYPE html>
<html lang="en">
    <head>
        {%metas%}
        <title>{%title%}</title>
        {%favicon%}
        {%css%}
        <style>"""
    + CSS
    + """</style>
        <!--headscope-script-->
    </head>
    <body>
        {%app_entry%}
        <footer>
            {%config%}
            {%scripts%}
            {%renderer%}
        </footer>
    </body>
</html>"""
)

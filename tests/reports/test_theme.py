"""The stylesheet shared by the dashboard and the report: valid CSS (every rule
parses, so none is silently dropped), inlined by both pages, offline."""

from __future__ import annotations

import tinycss2

from headscope.dashboard.theme import CSS, DASHBOARD_CSS, index_string
from headscope.figures.theme import THEME_CSS


def _rules(css: str) -> dict[str, list[tuple[str, str]]]:
    """Selector → declarations of every style rule (inside @media too); fails on
    any parse error, or a selector that swallowed stray declarations."""
    rules: dict[str, list[tuple[str, str]]] = {}
    for rule in tinycss2.parse_stylesheet(css, skip_whitespace=True, skip_comments=True):
        assert rule.type != "error", rule.message
        prelude = " ".join(tinycss2.serialize(rule.prelude).split())
        if rule.type == "at-rule":
            assert rule.at_keyword == "media", prelude  # no @import: pages stay offline
            for name, decls in _rules(tinycss2.serialize(rule.content)).items():
                rules.setdefault(f"@media {prelude} {name}", []).extend(decls)
            continue
        assert ";" not in prelude and "}" not in prelude, f"stray text before {prelude!r}"
        decls = []
        for decl in tinycss2.parse_declaration_list(
            rule.content, skip_whitespace=True, skip_comments=True
        ):
            assert decl.type == "declaration", (prelude, decl)
            decls.append((decl.lower_name, tinycss2.serialize(decl.value).strip()))
        assert decls, prelude
        rules.setdefault(prelude, []).extend(decls)
    return rules


def test_the_shared_stylesheet_is_valid_and_holds_the_shared_look():
    rules = _rules(THEME_CSS)
    variables = dict(rules[":root"])
    for name in ("--hs-ink", "--hs-muted", "--hs-line", "--hs-bg", "--hs-sans", "--hs-mono"):
        assert name in variables, name
    for selector in (".hs-card", ".hs-card h3", ".hs-page-title", ".hs-stats td", "body"):
        assert selector in rules, selector
    assert ("margin-bottom", "14px") in rules[".hs-card"]
    assert ("font-weight", "650") in rules[".hs-card h3"]
    assert "url(" not in THEME_CSS and "@import" not in THEME_CSS


def test_the_dashboard_inlines_the_shared_stylesheet_then_its_own():
    assert CSS == THEME_CSS + DASHBOARD_CSS
    rules = _rules(CSS)
    assert ".hs-nav a.hs-active" in rules and ".hs-card h3" in rules
    # the dashboard's own part only adds chrome: no shared rule is defined twice
    assert not set(_rules(THEME_CSS)) & set(_rules(DASHBOARD_CSS)) - {"body"}
    page = index_string("window.x = 1;")
    assert THEME_CSS in page and "<script>window.x = 1;</script>" in page


def test_the_report_inlines_the_shared_stylesheet(local_report):
    text = local_report.files["html"].read_text(encoding="utf-8")
    head = text.split("</head>", 1)[0]
    assert head.count(THEME_CSS) == 1
    style = head.split("<style>", 1)[1].split("</style>", 1)[0]
    rules = _rules(style)
    assert "table" in rules and "var(--hs-line)" in style

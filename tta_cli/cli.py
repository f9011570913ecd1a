"""The command line: parse, call one library function, render the result."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tta_cli import __version__
from tta_cli.errors import TTAError

if TYPE_CHECKING:
    from tta_cli.engine import Progress as RunProgress

app = typer.Typer(
    name="tta-cli",
    help="Test-time adaptation of deployed image classifiers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(stderr=True)
_debug = False


@app.callback()
def _global(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    global _debug
    _debug = debug
    if version:
        typer.echo(__version__)
        raise typer.Exit()
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, show_time=False)],
    )


@app.command()
def adapt(
    model: Annotated[Path | None, typer.Option(help="Model bundle folder (from 'tta-cli prepare').")] = None,
    source: Annotated[Path | None, typer.Option(help="Folder or image file to adapt on.")] = None,
    run: Annotated[Path | None, typer.Option(help="New run directory for predictions and summary.")] = None,
    method: Annotated[str | None, typer.Option(help="source, norm or tent.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per adaptation step (default 64).")] = None,
    optimizer: Annotated[str | None, typer.Option(help="adam or sgd (default the method's).")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate (default the method's).")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda or cuda:N (default auto).")] = None,
    order: Annotated[str | None, typer.Option(help="sorted or shuffled (with --seed) (default sorted).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for shuffling and any randomness (default 0).")] = None,
    workers: Annotated[int | None, typer.Option(help="Image-decoding threads.")] = None,
    limit: Annotated[int | None, typer.Option(help="Stop after this many images.")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML file of settings; flags override it.")] = None,
) -> None:
    """Adapt a model on a stream of unlabeled images, writing predictions as it goes."""
    overrides = {name: value for name, value in locals().items() if name != "config"}
    from tta_cli.config import load_config
    from tta_cli.engine import adapt as run_adaptation

    settings = load_config(config, overrides)
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[speed]} img/s  entropy {task.fields[entropy]}  acc {task.fields[accuracy]}"),
        TimeElapsedColumn(),
        console=console,
    )
    task = bar.add_task(settings.method, total=None, speed="-", entropy="-", accuracy="-")

    def show(progress: RunProgress) -> None:
        # Started on the first step, so that a configuration error leaves no empty bar behind.
        bar.start()
        bar.update(
            task,
            total=progress.total_images,
            completed=progress.images_seen + progress.images_skipped,
            speed=f"{progress.images_per_second:.0f}",
            entropy=_fmt(progress.mean_entropy),
            accuracy=_fmt(progress.accuracy, percent=True),
        )

    try:
        summary = run_adaptation(settings, on_step=show)
    finally:
        bar.stop()
    table = Table(title=f"tta-cli adapt → {settings.run}", show_header=False)
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    rows = {
        "method": summary.method,
        "device": summary.device,
        "images adapted": str(summary.images_seen),
        "images skipped": str(summary.images_skipped),
        "steps": str(summary.steps),
        "images/s": f"{summary.images_per_second:.0f}",
        "mean entropy": _fmt(summary.mean_entropy),
        "online accuracy": _fmt(summary.online_accuracy, percent=True),
    }
    for name, value in rows.items():
        table.add_row(name, value)
    Console().print(table)


@app.command()
def prepare(
    arch: Annotated[str, typer.Option(help="Zoo name, torchvision:NAME, timm:NAME or package.module:factory.")],
    weights: Annotated[Path, typer.Option(help="Trained weights (.safetensors, or .pt/.pth with --trust-pickle).")],
    source_data: Annotated[Path, typer.Option(help="Folder of clean source images in class sub-folders.")],
    out: Annotated[Path, typer.Option(help="Bundle folder to write.")],
    mean: Annotated[str, typer.Option(help="Per-channel input mean, comma-separated, in [0, 1].")],
    std: Annotated[str, typer.Option(help="Per-channel input std, comma-separated, in [0, 1].")],
    classes: Annotated[str | None, typer.Option(help="Class names, comma-separated (default sub-folders).")] = None,
    input_size: Annotated[int, typer.Option(help="Square input size in pixels.")] = 32,
    feature_layers: Annotated[str | None, typer.Option(help="Layers for feature alignment, comma-separated.")] = None,
    num_images: Annotated[int, typer.Option(help="Source images used for the feature statistics.")] = 2000,
    trust_pickle: Annotated[bool, typer.Option(help="Allow loading a pickle checkpoint (it can run code).")] = False,
) -> None:
    """Make a model bundle: weights, preprocessing and clean-source feature statistics."""
    from tta_cli.models import prepare_bundle

    spec = prepare_bundle(
        arch,
        weights,
        source_data,
        out,
        mean=_triple(mean, "--mean"),
        std=_triple(std, "--std"),
        class_names=_names(classes),
        input_size=(input_size, input_size),
        feature_layers=_names(feature_layers),
        num_images=num_images,
        trust_pickle=trust_pickle,
    )
    console.print(
        f"Wrote bundle {out} ({spec.architecture}, {spec.num_classes} classes, features {spec.feature_layers})."
    )


def _names(text: str | None) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()] if text else []


def _triple(text: str, option: str) -> tuple[float, float, float]:
    from tta_cli.errors import UsageError

    try:
        values = tuple(float(value) for value in text.split(","))
    except ValueError as error:
        raise UsageError(f"{option} must be three comma-separated numbers, got {text!r}.") from error
    if len(values) != 3:
        raise UsageError(f"{option} must be three comma-separated numbers, got {text!r}.")
    return values  # type: ignore[return-value]


def _fmt(value: float | None, percent: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" if percent else f"{value:.3f}"


def main() -> None:
    """Console entry point: a user's mistake is one red sentence and exit code 2."""
    try:
        app()
    except TTAError as error:
        if _debug:
            console.print_exception()
        console.print(f"[red]Error:[/red] {escape(str(error))}", soft_wrap=True, highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[yellow]Interrupted.[/yellow]")
        sys.exit(130)

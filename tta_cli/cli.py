"""The command line: parse, call one library function, render the result."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from tta_cli.config import (
    CropMode,
    DistillKD,
    HarmonizerName,
    Interpolation,
    MetaObjectiveName,
    NormName,
    OptimizerName,
    StreamOrder,
    adapt_default,
    adapt_settings,
    check_resume_flags,
    validated,
)
from tta_cli.errors import ExitCode, TTAError, UsageError
from tta_cli.version import __version__

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


def _adapt_help(flag: str, text: str) -> str:
    """``text`` and the default of the flag's setting, read from the configuration models so that
    the help cannot drift from them; an unset default is the method's choice."""
    default = adapt_default(flag)
    if default is None:
        shown = "the method's"
    elif isinstance(default, bool):
        shown = "on" if default else "off"
    else:
        shown = f"{default:g}" if isinstance(default, float) else str(default)
    return f"{text} (default {shown})."


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
    # Libraries stay at WARNING (the ONNX tool chain is chatty at INFO); tta-cli's own log shows
    # skipped inputs and other notes at INFO.
    logging.basicConfig(
        level=logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, show_time=False)],
    )
    logging.getLogger("tta_cli").setLevel(logging.DEBUG if debug else logging.INFO)


@app.command()
def adapt(
    model: Annotated[Path | None, typer.Option(help="Model bundle folder (from 'tta-cli prepare').")] = None,
    source: Annotated[
        str | None,
        typer.Option(help="Folder, glob, image, video file, camera index (0) or device (/dev/video0), rtsp/http URL."),
    ] = None,
    run: Annotated[Path | None, typer.Option(help="New run directory (default runs/adapt-DATE-TIME).")] = None,
    method: Annotated[
        str | None,
        typer.Option(help=f"Method (see tta-cli methods); default {adapt_default('method')}, the measured default."),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help=_adapt_help("batch_size", "Images per adaptation step"))
    ] = None,
    optimizer: Annotated[OptimizerName | None, typer.Option(help=_adapt_help("optimizer", "Optimizer"))] = None,
    lr: Annotated[float | None, typer.Option(help=_adapt_help("lr", "Learning rate"))] = None,
    harmonizer: Annotated[
        HarmonizerName | None, typer.Option(help=_adapt_help("harmonizer", "Harmonizer of two objectives' gradients"))
    ] = None,
    norm: Annotated[NormName | None, typer.Option(help=_adapt_help("norm", "BatchNorm on test batches"))] = None,
    device: Annotated[str | None, typer.Option(help=_adapt_help("device", "auto, cpu, cuda or cuda:N"))] = None,
    order: Annotated[
        StreamOrder | None, typer.Option(help=_adapt_help("order", "Order of a folder's images (shuffled with --seed)"))
    ] = None,
    seed: Annotated[int | None, typer.Option(help=_adapt_help("seed", "Seed for shuffling and any randomness"))] = None,
    workers: Annotated[int | None, typer.Option(help="Image-decoding threads.")] = None,
    stride: Annotated[int | None, typer.Option(help=_adapt_help("stride", "Keep every N-th frame or image"))] = None,
    limit: Annotated[
        int | None, typer.Option("--max-frames", "--limit", help="Stop after this many frames or images.")
    ] = None,
    duration: Annotated[float | None, typer.Option(help="Stop reading after this many seconds.")] = None,
    watchdog_timeout: Annotated[
        float | None,
        typer.Option(help=_adapt_help("watchdog_timeout", "Live sources: seconds without a frame before reconnecting")),
    ] = None,
    reconnect_attempts: Annotated[
        int | None,
        typer.Option(help=_adapt_help("reconnect_attempts", "Live sources: reconnects in a row before the run ends")),
    ] = None,
    snapshot_every: Annotated[
        int | None, typer.Option(help=_adapt_help("snapshot_every", "Steps between snapshots"))
    ] = None,
    guard: Annotated[
        bool | None, typer.Option("--guard/--no-guard", help=_adapt_help("guard", "Label-free guard"))
    ] = None,
    domain_weighting: Annotated[
        bool | None,
        typer.Option(
            "--domain-weighting/--no-domain-weighting",
            help=_adapt_help("domain_weighting", "Weigh inputs by clusters of like images, so no shift dominates"),
        ),
    ] = None,
    config: Annotated[Path | None, typer.Option(help="TOML file of settings; flags override it.")] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue this run directory from its current state, same settings.")
    ] = None,
) -> None:
    """Adapt a model on a stream of unlabeled images, recording every step."""
    flags = {name: value for name, value in locals().items() if name not in ("config", "resume")}
    from tta_cli.engine import adapt as run_adaptation
    from tta_cli.engine import resume as resume_run
    from tta_cli.engine.stopping import EXIT_CODES

    if resume is not None:
        check_resume_flags(config, **flags)
        method_name = "resume"
    else:
        settings = adapt_settings(config, **flags)
        method_name = settings.method
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(
            "{task.fields[speed]} img/s  entropy {task.fields[entropy]}  acc {task.fields[accuracy]}"
            "  dropped {task.fields[dropped]}"
        ),
        TimeElapsedColumn(),
        console=console,
    )
    task = bar.add_task(method_name, total=None, speed="-", entropy="-", accuracy="-", dropped="0")

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
            dropped=str(progress.frames_dropped),
        )

    try:
        summary = resume_run(resume, on_step=show) if resume else run_adaptation(settings, on_step=show)
    finally:
        bar.stop()
    table = Table(title=escape(f"tta-cli adapt → {resume or settings.run}"), show_header=False)
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
        "guard rollbacks": str(summary.rollbacks),
        "frames dropped": str(summary.frames_dropped),
        "reconnects": str(summary.reconnects),
    }
    if summary.folders_not_listed:
        rows["folders not listed"] = str(len(summary.folders_not_listed))
    for name, value in rows.items():
        table.add_row(name, value)
    Console().print(table)
    run_path = resume or settings.run
    if summary.stopped_by is not None:
        _say(
            f"[yellow]Stopped by {summary.stopped_by}[/yellow] after step {summary.steps}; the history is complete. "
            f"Continue with 'tta-cli adapt --resume {escape(str(run_path))}'."
        )
        raise typer.Exit(EXIT_CODES[summary.stopped_by])
    if summary.source_lost is not None:
        _say(
            f"[red]Source lost:[/red] {escape(summary.source_lost)}; the history is complete up to step "
            f"{summary.steps}."
        )
        raise typer.Exit(ExitCode.SOURCE_LOST)


@app.command()
def methods() -> None:
    """List the adaptation methods."""
    from tta_cli.engine import METHODS

    table = Table(title="methods")
    table.add_column("name", style="bold")
    table.add_column("what it does")
    for method in METHODS.values():
        table.add_row(method.name, method.summary)
    console = Console()
    console.print(table)
    console.print(
        "Variants: NAME:HARMONIZER (two objectives), +batch / +robust / +tbr / +balanced / +weighted "
        "(BatchNorm on test batches), "
        "+memory[N] (learn from a class-balanced memory), +resetN (back to the source every N steps), "
        "+return (back to the source when the images turn back towards its own), +harmonizeN (harmonize on one "
        "step in N), +alignW (weigh the feature alignment by W), +featuresDIGITS (align those feature layers, "
        "numbered from 1), +guard (the benchmark runs it guarded), e.g. mgtta+weighted+memory."
    )


@app.command()
def prepare(
    arch: Annotated[
        str,
        typer.Option(help="Zoo name, torchvision:NAME, timm:NAME, package.module:factory or path/to/file.py:factory."),
    ],
    weights: Annotated[Path, typer.Option(help="Trained weights (.safetensors, or .pt/.pth with --trust-pickle).")],
    source_data: Annotated[Path, typer.Option(help="Folder of clean source images in class sub-folders.")],
    out: Annotated[Path, typer.Option(help="Bundle folder to write: new, or empty.")],
    mean: Annotated[
        str | None,
        typer.Option(
            help="Input mean in [0, 1]: three comma-separated values (RGB) or one (gray); timm and torchvision "
            "architectures default to their pretrained config's."
        ),
    ] = None,
    std: Annotated[
        str | None,
        typer.Option(help="Input std in [0, 1], as --mean; timm and torchvision default to their pretrained config's."),
    ] = None,
    classes: Annotated[str | None, typer.Option(help="Class names, comma-separated (default sub-folders).")] = None,
    input_size: Annotated[
        str | None,
        typer.Option(help="Input size in pixels: HEIGHT,WIDTH or one number (default the pretrained config's, or 32)."),
    ] = None,
    crop_pct: Annotated[
        float | None,
        typer.Option(
            help="Part of the resized image the centre crop keeps, in (0, 1]: images are resized to input size / "
            "crop-pct first (default the pretrained config's, or 1)."
        ),
    ] = None,
    crop_mode: Annotated[
        CropMode | None,
        typer.Option(
            help="squash: resize to that size, aspect ratio lost; center: keep the aspect ratio, cut the rest "
            "(default the pretrained config's, or squash)."
        ),
    ] = None,
    interpolation: Annotated[
        Interpolation | None, typer.Option(help="Resize filter (default the pretrained config's, or bilinear).")
    ] = None,
    feature_layers: Annotated[str | None, typer.Option(help="Layers for feature alignment, comma-separated.")] = None,
    num_images: Annotated[int, typer.Option(help="Source images used for the feature statistics.")] = 2000,
    trust_pickle: Annotated[bool, typer.Option(help="Allow loading a pickle checkpoint (it can run code).")] = False,
) -> None:
    """Make a model bundle: weights, preprocessing and clean-source feature statistics."""
    from tta_cli.models import load_bundle, prepare_bundle
    from tta_cli.models.typicality import MIN_IMAGES, shallow_layers

    spec = prepare_bundle(
        arch,
        weights,
        source_data,
        out,
        mean=None if mean is None else _numbers(mean, "--mean", float, (1, 3)),
        std=None if std is None else _numbers(std, "--std", float, (1, 3)),
        class_names=_names(classes),
        input_size=None if input_size is None else _size(input_size),
        crop_pct=crop_pct,
        crop_mode=crop_mode,
        interpolation=interpolation,
        feature_layers=_names(feature_layers),
        num_images=num_images,
        trust_pickle=trust_pickle,
    )
    height, width = spec.input_size
    console.print(
        f"Wrote bundle {out} ({spec.architecture}, {spec.num_classes} classes, input {height}×{width} by "
        f"{spec.crop_mode} crop {spec.crop_pct:g} ({spec.interpolation}), mean {spec.mean}, std {spec.std}, "
        f"features {spec.feature_layers})."
    )
    bundle = load_bundle(out)
    if bundle.typicality is None and shallow_layers(bundle.model):
        console.print(
            f"[yellow]No typicality measured: it needs {MIN_IMAGES} readable clean images and shallow normalisation "
            "layers over positions (a map or tokens); without it, the default "
            "tells a camera on one scene from a collapsed source by the batch's statistics, which fails on some "
            "networks, and without BatchNorm θ does not return to the source when the images do "
            "(docs/bundles.md).[/yellow]"
        )


@app.command()
def history(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    last: Annotated[int | None, typer.Option(help="Only the last N steps.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print steps, events and aliases as JSON.")] = False,
    plot: Annotated[Path | None, typer.Option(help="Write a PNG of entropy, accuracy, update norm, majority.")] = None,
) -> None:
    """Show what happened in a run, step by step."""
    import json

    from tta_cli.history import read_history

    record = read_history(run, last)
    if plot is not None:
        from tta_cli.history.plot import plot_history

        plot_history(read_history(run) if last else record, plot)
        console.print(escape(f"Wrote {plot}"))
    if json_output:
        typer.echo(json.dumps(record, indent=2))
        return
    steps = Table(title=escape(f"steps of {run}"))
    for column in ("step", "images", "losses", "update norm", "entropy", "majority", "accuracy", "verdict", "snapshot"):
        steps.add_column(column, justify="left" if column in ("losses", "verdict", "snapshot") else "right")
    for step in record["steps"]:
        steps.add_row(
            str(step["step"]),
            str(step["batch_size"]),
            " ".join(f"{name}={value:.4f}" for name, value in step["losses"].items()) or "-",
            _fmt(step["update_norm"]),
            _fmt(step["entropy"]),
            _fmt(step["majority_fraction"], percent=True),
            _fmt(step["accuracy"], percent=True),
            escape(step["verdict"]),
            (step["snapshot_id"] or "-")[:12],
        )
    out = Console()
    out.print(steps)
    events = Table(title="events")
    for column in ("step", "kind", "detail", "snapshot"):
        events.add_column(column)
    for event in record["events"]:
        events.add_row(
            str(event["step"]), escape(event["kind"]), escape(event["detail"]), (event["snapshot_id"] or "-")[:12]
        )
    out.print(events)
    if record["conflict_fraction"] is not None:
        out.print(f"objectives in conflict (cos(g1, g2) < 0) on {record['conflict_fraction']:.0%} of steps")
    out.print(
        "aliases: "
        + ", ".join(f"{name} → step {ref['step']} ({ref['id'][:12]})" for name, ref in record["aliases"].items())
    )


@app.command()
def trust(bundle: Annotated[Path, typer.Argument(help="Bundle folder.")]) -> None:
    """Let a bundle run the Python file that builds its model, on this machine, as it is now."""
    from tta_cli.models import trust_bundle

    trusted = trust_bundle(bundle)
    if trusted is None:
        console.print(escape(f"Bundle {bundle} builds its model without a file of its own; nothing to trust."))
        return
    file, digest = trusted
    console.print(escape(f"Trusted {file} (SHA-256 {digest}) to build the model of {bundle} on this machine."))


@app.command()
def rollback(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    to: Annotated[str, typer.Option("--to", help="A step number, a snapshot id (prefix) or an alias.")],
) -> None:
    """Point a run's current state at an earlier one (recorded as an event; nothing is deleted)."""
    from tta_cli.history import rollback as rollback_run

    target = rollback_run(run, to)
    console.print(f"current → step {target.step} (snapshot {target.id[:12]}); continue with 'tta-cli adapt --resume'.")


@app.command()
def bench(
    model: Annotated[Path, typer.Option(help="Model bundle folder.")],
    data: Annotated[Path, typer.Option(help="Labeled clean folder (<class>/<image>), e.g. CIFAR-10's test split.")],
    out: Annotated[Path, typer.Option(help="Folder for bench.json, bench.md and bench.png.")],
    corruptions: Annotated[str | None, typer.Option(help="Comma-separated (default all 15).")] = None,
    severity: Annotated[int, typer.Option(help="Corruption severity, 1-5 (one per run).")] = 5,
    num_examples: Annotated[int | None, typer.Option(help="Images per corruption (default all).")] = None,
    methods: Annotated[
        str, typer.Option(help="Comma-separated methods; auto: what adapt runs on this bundle by default, guarded.")
    ] = "source,norm,tent,eata,sar",
    protocols: Annotated[
        str,
        typer.Option(
            help="reset, continual and/or mixed (every corruption shuffled into one stream; beside reset, "
            "also transfer and interference per corruption), comma-separated."
        ),
    ] = "reset,continual",
    batch_size: Annotated[int, typer.Option(help="Images per adaptation step.")] = 200,
    order: Annotated[
        str,
        typer.Option(
            help="Order of each corruption's images: shuffled; sorted (by class); dirichlet:ALPHA (labels "
            "correlated over time as in NOTE and RoTTA, 0.1 strongly); video:K (each image as K near-identical frames)."
        ),
    ] = "shuffled",
    rounds: Annotated[
        int,
        typer.Option(
            help="Passes over the corruption sequence; only continual carries the state from one to the next "
            "(under reset every round repeats the first)."
        ),
    ] = 1,
    seed: Annotated[int, typer.Option(help="Seed for the image choice, the stream order and corruptions.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    source_data: Annotated[
        Path | None, typer.Option(help="Clean labeled source images for EATA's Fisher term (else EATA runs as ETA).")
    ] = None,
    fisher_examples: Annotated[int, typer.Option(help="Source images for the Fisher information.")] = 2000,
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="Cache of corrupted streams (default $TTA_CLI_CACHE/bench or ~/.cache/tta-cli/bench)."),
    ] = None,
    speed: Annotated[bool, typer.Option("--speed/--no-speed", help="Measure step time against the floor.")] = True,
    speed_repeats: Annotated[int, typer.Option(help="Timed steps per method and batch size (median).")] = 10,
    domain_weighting: Annotated[
        bool,
        typer.Option(help="Under the mixed protocol, weigh inputs by clusters of like images (methods with steps)."),
    ] = False,
) -> None:
    """Compare methods on a clean labeled folder under the CIFAR-10-C / ImageNet-C corruptions."""
    from tta_cli.bench.run import BenchConfig, BenchProgress, run_bench

    options = {
        "model": model,
        "data": data,
        "out": out,
        "severity": severity,
        "num_examples": num_examples,
        "methods": tuple(_names(methods)),
        "protocols": tuple(_names(protocols)),
        "batch_size": batch_size,
        "order": order,
        "rounds": rounds,
        "seed": seed,
        "device": device,
        "source_data": source_data,
        "fisher_examples": fisher_examples,
        "cache_dir": cache_dir,
        "speed": speed,
        "speed_repeats": speed_repeats,
        "domain_weighting": domain_weighting,
        **({"corruptions": tuple(_names(corruptions))} if corruptions else {}),
    }
    settings = validated(BenchConfig, options, as_options=True)
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    tasks: dict[str, TaskID] = {}
    last_logged = [""]

    def show(progress: BenchProgress) -> None:
        if not console.is_terminal:
            # Into a log file: one line whenever the work moves to another corruption or phase.
            if progress.description != last_logged[0]:
                last_logged[0] = progress.description
                console.print(f"{progress.description}: {progress.completed}/{progress.total}", highlight=False)
            return
        bar.start()
        if progress.phase not in tasks:
            tasks[progress.phase] = bar.add_task(progress.description, total=progress.total)
        bar.update(tasks[progress.phase], description=progress.description, completed=progress.completed)

    try:
        result = run_bench(settings, on_progress=show)
    finally:
        bar.stop()
    from tta_cli.bench.report import error_table

    # Sixteen columns do not fit the 80 characters Rich assumes when writing to a file or pipe.
    output = Console() if Console().is_terminal else Console(width=160)
    for protocol in settings.protocols:
        rows = error_table(result, protocol)
        table = Table(title=f"online error (%), {protocol}")
        for index, column in enumerate(rows[0]):
            table.add_column(column, justify="left" if index == 0 else "right")
        for row in rows[1:]:
            table.add_row(*(cell.strip("*") for cell in row))
        output.print(table)
    output.print(f"EATA's Fisher information: {result['fisher']}.")
    output.print(f"Wrote {out / 'bench.json'}, {out / 'bench.md'} and {out / 'bench.png'}.")


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="Run directory.")],
    out: Annotated[Path, typer.Option(help="ONNX file to write.")],
    step: Annotated[int | None, typer.Option(help="Export the state after this step.")] = None,
    snapshot: Annotated[str | None, typer.Option(help="Export this snapshot (id or unique prefix).")] = None,
    alias: Annotated[str | None, typer.Option(help="Export this alias: current (default), last-good, source.")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 18,
    dynamic_batch: Annotated[bool, typer.Option("--dynamic-batch/--static-batch", help="Symbolic batch axis.")] = True,
    simplify: Annotated[
        Literal["onnxslim", "none"], typer.Option(help="Graph simplifier (none: keep the exported graph).")
    ] = "onnxslim",
    bn_stats: Annotated[
        Literal["source", "target", "tracked"] | None,
        typer.Option(
            help="BatchNorm statistics: the bundle's (source), re-estimated on recent images (target) or the run's "
            "(tracked; default for runs with robust, tbr, balanced or weighted statistics, the default's "
            "included; else source)."
        ),
    ] = None,
    check: Annotated[bool, typer.Option("--check/--no-check", help="Verify with onnxruntime.")] = True,
    atol: Annotated[
        float, typer.Option(help="Logit difference the check accepts, plus --rtol times the logit.")
    ] = 1e-4,
    rtol: Annotated[float, typer.Option(help="Logit difference the check accepts per unit of logit.")] = 1e-4,
    images: Annotated[
        Path | None,
        typer.Option(help="Folder of images to verify on, drawn in a seeded shuffle (default: the run's latest)."),
    ] = None,
    num_images: Annotated[int, typer.Option(help="How many images to verify on.")] = 256,
    bundle: Annotated[Path | None, typer.Option(help="The run's bundle, if it has moved.")] = None,
) -> None:
    """Export a recorded state of a run to ONNX and verify it against PyTorch."""
    from tta_cli.export import export_run, onnxruntime_warning

    chosen = [value for value in (step, snapshot, alias) if value is not None]
    if len(chosen) > 1:
        raise UsageError("Give at most one of --step, --snapshot and --alias.")
    warning = onnxruntime_warning()
    if warning:
        console.print(f"[yellow]Warning:[/yellow] {escape(warning)}")
    report = export_run(
        run,
        out,
        str(chosen[0]) if chosen else "current",
        bundle_path=bundle,
        images=images,
        num_images=num_images,
        opset=opset,
        dynamic_batch=dynamic_batch,
        simplify=simplify,
        bn_stats=bn_stats,
        check=check,
        atol=atol,
        rtol=rtol,
    )
    table = Table(title=escape(f"tta-cli export → {report.out}"), show_header=False)
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    table.add_row("step", str(report.step))
    table.add_row("snapshot", report.snapshot_id[:12])
    table.add_row("BatchNorm statistics", report.bn_stats)
    if report.parity is not None:
        sizes = ", ".join(str(size) for size in report.parity.batch_sizes)
        table.add_row("verified on", f"{report.parity.images} images ({report.parity.provider}; batches of {sizes})")
        table.add_row("max |Δlogit|", f"{report.parity.max_abs_diff:.2e}")
        table.add_row("top-1 agreement", f"{report.parity.top1_agreement:.2%}")
    Console().print(table)


@app.command()
def analyze(
    model: Annotated[Path, typer.Option(help="Model bundle folder.")],
    domain: Annotated[
        list[str],
        typer.Option(help="NAME=LABELED_FOLDER, or a corruption name applied to --data; two or more (repeat)."),
    ],
    out: Annotated[Path, typer.Option(help="Folder for analysis.json, the heat-maps and the run directories.")],
    data: Annotated[
        Path | None, typer.Option(help="Labeled clean folder that corruption domains are made from.")
    ] = None,
    severity: Annotated[int, typer.Option(help="Severity of corruption domains, 1-5.")] = 5,
    method: Annotated[list[str] | None, typer.Option(help="Method to analyse (repeat; default tent).")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per adaptation step.")] = 64,
    num_examples: Annotated[int | None, typer.Option(help="Images per domain (default all).")] = None,
    probe_fraction: Annotated[float, typer.Option(help="Share of each domain held out as labeled probes.")] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed for the image choice, the probe split and the mix.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    domain_weighting: Annotated[
        bool, typer.Option(help="The joint run weighs inputs by clusters of like images.")
    ] = False,
    cache_dir: Annotated[Path | None, typer.Option(help="Cache of corrupted images (as for bench).")] = None,
) -> None:
    """Transfer and interference: adapt on each domain alone and on their mix, compare per probe image."""
    from tta_cli.analysis.run import AnalyzeConfig, run_analysis

    domains: dict[str, Path | None] = {}
    for text in domain:
        name, equals, folder = text.partition("=")
        if not name or name in domains:
            raise UsageError(f"--domain {text!r}: each domain needs its own non-empty name.")
        domains[name] = Path(folder) if equals else None
    options = {
        "model": model,
        "domains": domains,
        "out": out,
        "data": data,
        "severity": severity,
        "methods": tuple(method or ("tent",)),
        "batch_size": batch_size,
        "num_examples": num_examples,
        "probe_fraction": probe_fraction,
        "seed": seed,
        "device": device,
        "domain_weighting": domain_weighting,
        "cache_dir": cache_dir,
    }
    settings = validated(AnalyzeConfig, options, as_options=True)
    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )
    task = bar.add_task("loading", total=None)

    def show(description: str, completed: int, total: int) -> None:
        bar.start()
        bar.update(task, description=description, completed=completed, total=total)

    try:
        result = run_analysis(settings, on_progress=show)
    finally:
        bar.stop()
    for name, analysed in result["methods"].items():
        table = Table(title=f"{name}: probe accuracy (%) and the joint run against each domain alone")
        for column in ("domain", "before", "alone", "joint", "transfer", "interference", "loss lower / higher"):
            table.add_column(column, justify="left" if column == "domain" else "right")
        accuracy = analysed["accuracy"]
        for domain_name, parts in analysed["split"].items():
            table.add_row(
                domain_name,
                f"{100 * accuracy['before'][domain_name]:.1f}",
                f"{100 * accuracy['alone'][domain_name][domain_name]:.1f}",
                f"{100 * accuracy['joint'][domain_name]:.1f}",
                f"{parts['transfer_percent']:.1f}",
                f"{parts['interference_percent']:.1f}",
                f"{parts['loss_lower_jointly']} / {parts['loss_higher_jointly']}",
            )
        Console().print(table)
    pictures = ", ".join(str(out / f"{name}.png") for name in result["methods"])
    _say(escape(f"Wrote {out / 'analysis.json'} and {pictures}; the runs are under {out / 'runs'}."))


@app.command("train-mgg")
def train_mgg(
    model: Annotated[Path, typer.Option(help="Model bundle to pre-train a Meta Gradient Generator for.")],
    data: Annotated[Path, typer.Option(help="Clean *training* images in class sub-folders.")],
    out: Annotated[
        Path | None,
        typer.Option(
            help="Where to write (default BUNDLE/mgg.safetensors; with --no-memory mgg-no-memory.safetensors)."
        ),
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a generator already there.")] = False,
    num_images: Annotated[int, typer.Option(help="Training images under the held-out shifts.")] = 2048,
    eval_images: Annotated[int, typer.Option(help="Other images, under each held-out shift: pick the epoch.")] = 1024,
    epochs: Annotated[int, typer.Option(help="Passes over them.")] = 10,
    batch_size: Annotated[int, typer.Option(help="Images per inner step (split among torchrun processes).")] = 64,
    eval_batch_size: Annotated[int, typer.Option(help="Images per step of the held-out passes (split likewise).")] = 64,
    lr: Annotated[float, typer.Option(help="Adam learning rate of the generator.")] = 1e-3,
    step_size: Annotated[float, typer.Option(help="α of θ ← θ − α·MGG(…), in training and use.")] = 1e-3,
    train_step_size: Annotated[float | None, typer.Option(help="A different α while training.")] = None,
    meta_objective: Annotated[
        MetaObjectiveName, typer.Option(help="Loss of the next batch the generator learns to lower.")
    ] = "cross-entropy",
    unroll: Annotated[int, typer.Option(help="Steps whose meta-losses reach the generator through θ.")] = 8,
    passes: Annotated[
        int, typer.Option(help="Passes over the training images in one episode (θ carried): the episode's length.")
    ] = 1,
    harmonizer: Annotated[HarmonizerName, typer.Option(help="Harmonizer of the two objectives' gradients.")] = "gh++",
    memory: Annotated[bool, typer.Option("--memory/--no-memory", help="TTT-Linear gradient memory.")] = True,
    anchor: Annotated[
        bool, typer.Option("--anchor/--no-anchor", help="Learn a pull of θ back towards the source.")
    ] = True,
    scale: Annotated[
        bool, typer.Option("--scale/--no-scale", help="Learn a factor of every step (α·e^s), from 1.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed (deterministic on a given device).")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
) -> None:
    """Pre-train the bundle's Meta Gradient Generator on held-out shifts of training images."""
    from tta_cli.mgg.train import TrainProgress
    from tta_cli.mgg.train import train_mgg as run_training

    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )
    task = bar.add_task("train-mgg", total=epochs)

    def show(progress: TrainProgress) -> None:
        bar.start()  # on the first process only: the others report no progress
        bar.update(task, completed=progress.epoch - (progress.phase == "train"))

    try:
        report = run_training(
            model,
            data,
            out=out,
            num_images=num_images,
            eval_images=eval_images,
            epochs=epochs,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            lr=lr,
            step_size=step_size,
            train_step_size=train_step_size,
            meta_objective=meta_objective,
            unroll=unroll,
            passes=passes,
            seed=seed,
            device=device,
            harmonizer=harmonizer,
            memory=memory,
            anchored=anchor,
            scaled=scale,
            overwrite=overwrite,
            on_progress=show,
        )
    finally:
        bar.stop()
    if not report.is_main:
        return
    console.print(
        f"Wrote {report.path}: best epoch {report.best_epoch}, held-out accuracy "
        f"{max(report.held_out_accuracy):.2%} (source {report.source_accuracy:.2%}, norm {report.norm_accuracy:.2%}, "
        f"tent {report.tent_accuracy:.2%})."
    )


@app.command()
def distill(
    run: Annotated[Path, typer.Argument(help="Run directory whose adapted state teaches the student.")],
    student: Annotated[
        str,
        typer.Option(
            help="Student architecture (zoo name such as resnet20, torchvision:NAME, timm:NAME, module:factory) "
            "or a bundle folder whose trained model the student starts from."
        ),
    ],
    source_data: Annotated[
        Path, typer.Option(help="Labeled source images, one sub-folder per class of the run's bundle.")
    ],
    out: Annotated[Path, typer.Option(help="Student bundle folder to write.")],
    step: Annotated[int | None, typer.Option(help="Teacher: the state after this step.")] = None,
    alias: Annotated[str | None, typer.Option(help="Teacher: this alias (default current; last-good, source).")] = None,
    target_data: Annotated[
        str | None,
        typer.Option(help="Target images: folder, glob or video file (default: the images the run adapted on)."),
    ] = None,
    kd: Annotated[
        DistillKD,
        typer.Option(help="unikd (UNI-KD), plain (Hinton KD on source and target) or none (source labels only)."),
    ] = "unikd",
    epochs: Annotated[int, typer.Option(help="Passes over the larger of the source and target sets.")] = 30,
    batch_size: Annotated[
        int, typer.Option(help="Source images per step, and as many target images (split among torchrun processes).")
    ] = 128,
    lr: Annotated[float, typer.Option(help="Adam's step size, falling to 0 on a half cosine.")] = 1e-3,
    weight_decay: Annotated[float, typer.Option(help="Adam's L2 weight decay.")] = 5e-4,
    temperature: Annotated[float, typer.Option(help="Softmax temperature of the distillation loss.")] = 4.0,
    augment: Annotated[
        bool, typer.Option("--augment/--no-augment", help="Random horizontal flips and 2-pixel shifts.")
    ] = True,
    bn_stats: Annotated[
        Literal["source", "target", "tracked"] | None,
        typer.Option(
            help="The teacher's BatchNorm statistics, as for export: the bundle's (source), re-estimated on the "
            "target images (target) or the run's (tracked; default for runs with robust, tbr, balanced or "
            "weighted statistics, the default's included; else source)."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the student's initialisation, the order and augmentation.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N (under torchrun: each process's own GPU).")] = (
        "auto"
    ),
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted distillation after its last completed epoch.")
    ] = False,
) -> None:
    """Distill a run's adapted model into a small student bundle (UNI-KD); torchrun for several devices."""
    from tta_cli.distill import DistillConfig, DistillProgress
    from tta_cli.distill import distill as run_distillation

    if step is not None and alias is not None:
        raise UsageError("Give at most one of --step and --alias.")
    options = {
        "run": run,
        "out": out,
        "student": student,
        "source_data": source_data,
        "target_data": target_data,
        "selector": str(step) if step is not None else alias or "current",
        "kd": kd,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "temperature": temperature,
        "augment": augment,
        "bn_stats": bn_stats,
        "seed": seed,
        "device": device,
    }
    settings = validated(DistillConfig, options, as_options=True)
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}  target acc {task.fields[accuracy]}"),
        TimeElapsedColumn(),
        console=console,
    )
    task = bar.add_task(f"distill {kd}", total=None, loss="-", accuracy="-")

    shown = {"loss": "-", "accuracy": "-"}

    def show(progress: DistillProgress) -> None:
        bar.start()
        if progress.loss is not None:
            shown["loss"] = _fmt(progress.loss)
        if progress.epoch_metrics is not None:
            shown["accuracy"] = _fmt(progress.epoch_metrics.get("target_accuracy"), percent=True)
        bar.update(
            task,
            description=f"distill {kd}, epoch {progress.epoch}/{progress.epochs}",
            total=progress.epochs * progress.steps,
            completed=(progress.epoch - 1) * progress.steps + progress.step,
            loss=shown["loss"],
            accuracy=shown["accuracy"],
        )

    try:
        report = run_distillation(settings, resume=resume, on_progress=show)
    finally:
        bar.stop()
    if not report.is_main:
        return
    table = Table(title=escape(f"tta-cli distill → {report.out}"), show_header=False)
    table.add_column("", style="bold")
    table.add_column("", justify="right")
    rows = {
        "distillation": report.kd,
        "teacher accuracy on target": _fmt(report.teacher_target_accuracy, percent=True),
        "student accuracy on target": _fmt(report.student_target_accuracy, percent=True),
        "teacher parameters": f"{report.teacher_parameters:,}",
        f"student parameters ({report.student})": f"{report.student_parameters:,}",
        "source / target images": f"{report.source_images} / {report.target_images}",
        "images skipped": str(report.skipped_images),
        "epochs": str(report.epochs)
        + (f" (resumed after {report.resumed_after_epoch})" if report.resumed_after_epoch else ""),
        "processes": str(report.world_size),
        "seconds": f"{report.seconds:.0f}",
    }
    for name, value in rows.items():
        table.add_row(name, value)
    Console().print(table)


def _names(text: str | None) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()] if text else []


def _numbers(text: str, option: str, kind: type[float] | type[int], counts: tuple[int, ...]) -> tuple[Any, ...]:
    """Comma-separated numbers, as many as one of ``counts``."""
    wanted = " or ".join(map(str, counts))
    try:
        values = tuple(kind(value) for value in text.split(","))
    except ValueError as error:
        raise UsageError(f"{option} takes {wanted} comma-separated numbers, got {text!r}.") from error
    if len(values) not in counts:
        raise UsageError(f"{option} takes {wanted} comma-separated numbers, got {text!r}.")
    return values


def _size(text: str) -> tuple[int, int]:
    values = _numbers(text, "--input-size", int, (1, 2))
    if min(values) < 1:
        raise UsageError(f"--input-size takes positive sizes, got {text!r}.")
    return (values[0], values[-1])


def _say(markup: str) -> None:
    """One message on standard error, wrapped by the terminal rather than by Rich."""
    console.print(markup, soft_wrap=True, highlight=False)


def _fmt(value: float | None, percent: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" if percent else f"{value:.3f}"


def main() -> None:
    """Console entry point: a user's mistake, or a path the system refuses, is one red sentence
    and exit code 2."""
    try:
        app()
    except TTAError as error:
        if _debug:
            console.print_exception()
        _say(f"[red]Error:[/red] {escape(str(error))}")
        sys.exit(error.exit_code)
    except OSError as error:
        # A path that cannot be created, read or written (a file where a folder should be,
        # a full disk, no permission): the system's reason, not a traceback.
        if _debug:
            console.print_exception()
        where = f" {error.filename}" if error.filename else ""
        _say(f"[red]Error:[/red] {escape(f'Could not use{where}: {error.strerror or error}.')}")
        sys.exit(ExitCode.USAGE)
    except KeyboardInterrupt:
        console.print("[yellow]Interrupted.[/yellow]")
        sys.exit(ExitCode.SIGINT)

"""How far a method's θ moves from the source's over a continual stream, step by step.

    python scripts/theta_drift.py --model BUNDLE --data CIFAR10_DIR/test --method mgtta --out drift.json

The 15 corruptions at severity 5, ``--num-examples`` images each, shuffled, one continual stream
(the bench's ``continual`` protocol, same images and order), the method run as the bench runs it.
After every step: the largest and the Euclidean distance of θ (the parameters the method adapts)
from the source's, and the online error of the corruption so far. Writes one JSON object with a
row per step and the error per corruption, and prints every ``--every``-th row.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from tta_cli.bench.protocols import CellResult, bench_method, run_method
from tta_cli.bench.streams import build_streams
from tta_cli.corruptions import CORRUPTIONS
from tta_cli.engine import Adapter
from tta_cli.models import load_bundle

app = typer.Typer(add_completion=False)


@app.command()
def main(
    model: Annotated[Path, typer.Option(help="Model bundle.")],
    data: Annotated[Path, typer.Option(help="Labeled clean folder (<class>/<image>) to corrupt.")],
    method: Annotated[str, typer.Option(help="A method name, as bench takes it.")],
    out: Annotated[Path, typer.Option(help="JSON file to write.")],
    num_examples: Annotated[int, typer.Option(help="Images per corruption.")] = 500,
    batch_size: int = 64,
    seed: int = 0,
    every: Annotated[int, typer.Option(help="Print every N-th step.")] = 8,
) -> None:
    torch.manual_seed(seed)
    bundle = load_bundle(model)
    streams = build_streams(data, bundle.spec.class_names, CORRUPTIONS, 5, bundle.spec.framing, num_examples, seed)
    streams = [stream.reordered("shuffled", seed) for stream in streams]
    source = {name: value.detach().clone() for name, value in bundle.model.named_parameters()}
    current: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []

    def on_corruption_start(corruption: str, adapter: Adapter) -> None:
        current.update(corruption=corruption, adapter=adapter)

    def on_batch(cell: CellResult, images: int) -> None:
        adapter: Adapter = current["adapter"]
        names = {id(param) for param in adapter.params}
        moved = torch.cat(
            [
                (param.detach() - source[name]).flatten()
                for name, param in adapter.model.named_parameters()
                if id(param) in names
            ]
        )
        rows.append(
            {
                "step": len(rows) + 1,
                "corruption": current["corruption"],
                "max_abs": moved.abs().max().item(),
                "norm": moved.norm().item(),
                "error": cell.errors / max(cell.images, 1),
            }
        )
        if len(rows) % every == 0:
            row = rows[-1]
            typer.echo(
                f"step {row['step']:4d} {row['corruption']:18s} max|Δθ| {row['max_abs']:.3f} ‖Δθ‖ {row['norm']:.3f}"
            )

    cells = run_method(
        bundle,
        bench_method(method, bundle),
        streams,
        "continual",
        batch_size,
        torch.device("cpu"),
        on_batch=on_batch,
        on_corruption_start=on_corruption_start,
    )
    errors = {cell.corruption: round(100 * cell.errors / cell.images, 2) for cell in cells}
    mean = sum(errors.values()) / len(errors)
    typer.echo(f"{method}: mean online error {mean:.2f} %")
    result = {"model": str(model), "method": method, "num_examples": num_examples, "batch_size": batch_size}
    out.write_text(json.dumps(result | {"seed": seed, "mean_error": mean, "errors": errors, "steps": rows}, indent=1))


if __name__ == "__main__":
    app()

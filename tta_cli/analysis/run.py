"""``tta-cli analyze``: which shift in a mixed stream is helped, and which hurt, by adapting to the others.

domains (labeled folders, or corruptions of one clean folder) → each split into images to adapt
on and held-out probe images → per method: a run on each domain alone and a run on their mix
(a seeded interleaving of the same images, so the same number of steps in all) → every adapted
state, and the state before any step, predicts every domain's probes → transfer and
interference per domain (``transfer``), the A→B matrix → OUT/analysis.json, OUT/<method>.png.

Every run is an ordinary run directory (OUT/runs/METHOD/alone-DOMAIN, OUT/runs/METHOD/joint),
so ``history``, ``rollback`` and ``export`` work on it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from tta_cli.analysis.transfer import split
from tta_cli.bench.protocols import mix
from tta_cli.bench.streams import ShiftedStream, build_streams, select_images
from tta_cli.config import AdaptConfig
from tta_cli.corruptions import BEYOND, CORRUPTIONS
from tta_cli.engine import Session, get_method
from tta_cli.errors import UsageError
from tta_cli.files import write_atomic
from tta_cli.models import Bundle, load_bundle
from tta_cli.streams import Batch
from tta_cli.streams.decode import UnreadableImage, decode_image


class AnalyzeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: Path = Field(description="model bundle folder")
    domains: dict[str, Path | None] = Field(
        description="domain name → labeled folder, or None for a corruption of ``data`` by that name"
    )
    out: Path = Field(description="folder for analysis.json, the heat-maps and the runs")
    data: Path | None = Field(None, description="labeled clean folder that corruption domains are made from")
    severity: int = Field(5, ge=1, le=5)
    methods: tuple[str, ...] = ("tent",)
    batch_size: int = Field(64, ge=1)
    num_examples: int | None = Field(None, ge=2, description="images per domain (default all)")
    probe_fraction: float = Field(0.2, gt=0, lt=1, description="share of each domain's images held out as probes")
    seed: int = 0
    device: str = "auto"
    domain_weighting: bool = Field(False, description="the joint run weighs inputs by cluster")
    cache_dir: Path | None = None

    @field_validator("domains")
    @classmethod
    def _two_or_more(cls, value: dict[str, Path | None]) -> dict[str, Path | None]:
        if len(value) < 2:
            raise ValueError("give at least two domains")
        return value


@dataclass
class Domain:
    """A domain's images to adapt on and its held-out probes."""

    name: str
    adapt: ShiftedStream
    probe: ShiftedStream
    skipped: int = 0


@dataclass
class Probed:
    """How one state predicted one domain's probes."""

    correct: np.ndarray
    loss: np.ndarray

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())


Report = Callable[[str, int, int], None]


def run_analysis(config: AnalyzeConfig, on_progress: Report | None = None) -> dict[str, Any]:
    """Every method alone on each domain and on their mix; returns what ``analysis.json`` holds."""
    for name in config.methods:
        if not get_method(name).updates:
            raise UsageError(f"{name} takes no gradient steps; analyze compares methods that adapt θ.")
    bundle = load_bundle(config.model)
    domains = load_domains(config, bundle)
    total = len(config.methods) * 2 * sum(len(domain.adapt) for domain in domains)
    done = [0]

    def advance(description: str, images: int) -> None:
        done[0] += images
        if on_progress is not None:
            on_progress(description, done[0], total)

    methods = {name: _analyze_method(name, config, domains, advance) for name in config.methods}
    result = {
        "config": config.model_dump(mode="json"),
        "model": {"path": str(bundle.path), "architecture": bundle.spec.architecture, "sha256": bundle.weights_sha256},
        "domains": {
            domain.name: {
                "adapt_images": len(domain.adapt),
                "probe_images": len(domain.probe),
                "skipped": domain.skipped,
            }
            for domain in domains
        },
        "methods": methods,
    }
    config.out.mkdir(parents=True, exist_ok=True)
    write_atomic(config.out / "analysis.json", json.dumps(result, indent=2) + "\n")
    from tta_cli.analysis.plot import plot_matrix

    for name, method in methods.items():
        plot_matrix(method, name, config.out / f"{name}.png")
    return result


def load_domains(config: AnalyzeConfig, bundle: Bundle) -> list[Domain]:
    """Each domain's images, split at random (seeded) into images to adapt on and probes."""
    spec = bundle.spec
    corruptions = [name for name, folder in config.domains.items() if folder is None]
    unknown = [name for name in corruptions if name not in CORRUPTIONS + BEYOND]
    if unknown:
        raise UsageError(
            f"Domain {unknown[0]!r} is neither NAME=FOLDER nor a corruption ({', '.join(CORRUPTIONS + BEYOND)})."
        )
    if corruptions and config.data is None:
        raise UsageError("Corruption domains need --data, the labeled clean folder to corrupt.")
    built = {}
    if corruptions:
        assert config.data is not None
        streams = build_streams(
            config.data,
            spec.class_names,
            corruptions,
            config.severity,
            spec.framing,
            config.num_examples,
            config.seed,
            config.cache_dir,
        )
        built = {stream.corruption: (stream, 0) for stream in streams}
    domains = []
    for name, folder in config.domains.items():
        stream, skipped = built[name] if folder is None else _labeled_stream(name, folder, bundle, config)
        if len(stream) < 2:
            raise UsageError(f"Domain {name} has {len(stream)} readable image; it needs two or more.")
        domains.append(_split_probe(stream, config.probe_fraction, config.seed, skipped))
    return domains


def _labeled_stream(name: str, folder: Path, bundle: Bundle, config: AnalyzeConfig) -> tuple[ShiftedStream, int]:
    """A labeled folder's images in a seeded order; unreadable ones skipped and counted."""
    spec = bundle.spec
    class_index = {class_name: index for index, class_name in enumerate(spec.class_names)}
    images, labels, ids, skipped = [], [], [], 0
    for relative in select_images(folder, spec.class_names, config.num_examples, config.seed):
        try:
            images.append(decode_image(folder / relative, spec.framing))
        except UnreadableImage:
            skipped += 1
            continue
        labels.append(class_index[relative.parts[0]])
        ids.append(relative.as_posix())
    if not images:
        raise UsageError(f"Domain {name}: no image of {folder} could be read.")
    return ShiftedStream(name, 0, folder, ids, np.stack(images), np.array(labels, dtype=np.int64)), skipped


def _split_probe(stream: ShiftedStream, fraction: float, seed: int, skipped: int) -> Domain:
    """The probes: a seeded ``fraction`` of the stream (at least one image, one left to adapt on)."""
    count = min(max(1, round(fraction * len(stream))), len(stream) - 1)
    order = np.random.default_rng(np.random.SeedSequence([seed, len(stream)])).permutation(len(stream))
    probe, adapt = np.sort(order[:count]), np.sort(order[count:])

    def part(indices: np.ndarray) -> ShiftedStream:
        ids = [stream.ids[index] for index in indices]
        return replace(stream, ids=ids, images=stream.images[indices], labels=stream.labels[indices])

    return Domain(stream.corruption, part(adapt), part(probe), skipped)


def _analyze_method(
    name: str, config: AnalyzeConfig, domains: Sequence[Domain], advance: Callable[[str, int], None]
) -> dict[str, Any]:
    runs = config.out / "runs" / name
    alone: dict[str, dict[str, Probed]] = {}
    before: dict[str, Probed] = {}
    for domain in domains:
        with _session(name, config, runs / f"alone-{domain.name}", weighting=False) as session:
            if not before:
                before = _probe_all(session, domains, config.batch_size)
            _feed(session, domain.adapt, config.batch_size, advance, f"{name} · {domain.name} alone")
            alone[domain.name] = _probe_all(session, domains, config.batch_size)
    mixed = mix([domain.adapt for domain in domains], config.seed)
    with _session(name, config, runs / "joint", weighting=config.domain_weighting) as session:
        _feed(session, mixed, config.batch_size, advance, f"{name} · joint")
        joint = _probe_all(session, domains, config.batch_size)
    return {
        "runs": {"alone": {d.name: str(runs / f"alone-{d.name}") for d in domains}, "joint": str(runs / "joint")},
        "accuracy": {
            "before": {d.name: before[d.name].accuracy for d in domains},
            "alone": {a.name: {b.name: alone[a.name][b.name].accuracy for b in domains} for a in domains},
            "joint": {d.name: joint[d.name].accuracy for d in domains},
        },
        "split": {
            d.name: split(
                alone[d.name][d.name].correct, joint[d.name].correct, alone[d.name][d.name].loss, joint[d.name].loss
            ).as_dict()
            for d in domains
        },
    }


def _session(method: str, config: AnalyzeConfig, run: Path, weighting: bool) -> Session:
    settings = AdaptConfig(
        model=config.model,
        source="python",
        run=run,
        method=method,
        batch_size=config.batch_size,
        seed=config.seed,
        device=config.device,
        domain_weighting=weighting,
    )
    return Session.create(settings)


def _feed(
    session: Session, stream: ShiftedStream, batch_size: int, advance: Callable[[str, int], None], description: str
) -> None:
    """The stream through the session, batch by batch; labels only score the online accuracy."""
    device = session.preprocess.device
    for start in range(0, len(stream), batch_size):
        end = min(start + batch_size, len(stream))
        images = session.preprocess(stream.images[start:end])
        labels = torch.from_numpy(stream.labels[start:end]).to(device)
        session.step(Batch(stream.ids[start:end], images, labels, session.position + end - start))
        advance(description, end - start)


def _probe_all(session: Session, domains: Sequence[Domain], batch_size: int) -> dict[str, Probed]:
    """Every domain's probes as the session's model predicts them now, in batches as it adapted."""
    probed = {}
    for domain in domains:
        correct, losses = [], []
        for start in range(0, len(domain.probe), batch_size):
            images = session.preprocess(domain.probe.images[start : start + batch_size])
            labels = torch.from_numpy(domain.probe.labels[start : start + batch_size]).to(images.device)
            logits = session.adapter.evaluate(images)
            correct.append((logits.argmax(dim=1) == labels).cpu().numpy())
            losses.append(torch.nn.functional.cross_entropy(logits, labels, reduction="none").cpu().numpy())
        probed[domain.name] = Probed(np.concatenate(correct), np.concatenate(losses))
    return probed

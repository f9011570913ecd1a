"""What each objective's gradient contributes to a step, and what a harmonizer changes in it
(docs/benchmarks.md, "What a harmonizer changes in a step"): the continual stream of "Which harmonizer"
(every corruption at severity 5, 500 images each, shuffled with seed 0, batch 64), adapted by
the hand-made update (Adam, lr 1e-3) or the bundle's generator without memory, on the gradient
of entropy (g1) and feature alignment (g2) combined in several ways:

- ``sum``, ``gh++``, ``gh``, ``pcgrad``: g1 + g2 and the harmonizers over all of θ, on every
  step (``bench``'s ``+harmonize1``);
- ``pcgrad/module``: PCGrad on each normalisation layer's parameters alone (their conflicts
  are stronger than θ's as a whole);
- ``entropy``, ``alignment``: one gradient alone;
- ``agree``: g1 + g2 on the coordinates where their signs agree, 0 elsewhere.

Per run: the online error, the median ratio ‖g1‖ / ‖g2‖, the median cosine of g1 and g2 over θ
and the median of the lowest cosine over the layers, and the mean share of θ's coordinates
where the combined gradient's sign differs from the sum's (a coordinate set to 0 counts as
differing; Adam and the generator see each coordinate's gradient divided by its own running
scale, so a combination changes their step mostly where it flips a sign). The ``sum`` rows
reproduce ``bench``'s ``:sum`` rows of "Which harmonizer" exactly.

    python docs/bench/harmonizers/gradients.py BUNDLE CIFAR10_DIR/test [COMBINATION@UPDATE,...]
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from tta_cli.bench.streams import build_streams, default_cache_dir
from tta_cli.corruptions import CORRUPTIONS
from tta_cli.engine.params import configure_model, norm_affine_parameters
from tta_cli.harmonize import make_harmonizer
from tta_cli.mgg.rule import rule_for_bundle
from tta_cli.models import Bundle, load_bundle
from tta_cli.models.bundle import MGG_NO_MEMORY_FILE
from tta_cli.models.features import record_features
from tta_cli.objectives import Entropy, FeatureAlignment
from tta_cli.streams import Batch, Preprocess

DEFAULT = (
    "sum@adam,gh++@adam,gh@adam,pcgrad@adam,pcgrad/module@adam,entropy@adam,alignment@adam,agree@adam,"
    "sum@mgg,gh++@mgg,gh@mgg,pcgrad@mgg,pcgrad/module@mgg,entropy@mgg,alignment@mgg,agree@mgg"
)
Combine = Callable[[torch.Tensor], torch.Tensor]


def combination(name: str, sizes: list[int]) -> Combine:
    """``(2, D)`` gradients → one ``(D,)`` direction."""
    if name == "entropy":
        return lambda gradients: gradients[0]
    if name == "alignment":
        return lambda gradients: gradients[1]
    if name == "agree":
        return lambda gradients: torch.where(gradients.prod(0) < 0, 0.0, gradients.sum(0))
    harmonizer, _, per = name.partition("/")
    blocks = sizes if per == "module" else [sum(sizes)]
    harmonizers = [make_harmonizer(harmonizer) for _ in blocks]
    return lambda gradients: torch.cat(
        [h(block).gradient for h, block in zip(harmonizers, gradients.split(blocks, dim=1), strict=True)]
    )


def run(bundle: Bundle, streams: list, name: str, update: str) -> dict[str, float]:
    model, spec = bundle.model, bundle.spec
    source = {key: value.clone() for key, value in model.state_dict().items()}
    params = norm_affine_parameters(model)
    tensors = list(params.values())
    modules: dict[str, int] = {}
    for key, param in params.items():
        modules[key.rsplit(".", 1)[0]] = modules.get(key.rsplit(".", 1)[0], 0) + param.numel()
    combine = combination(name, list(modules.values()))
    configure_model(model, batch_statistics=True, params=tensors)
    optimizer = torch.optim.Adam(tensors, lr=1e-3) if update == "adam" else None
    rule = rule_for_bundle(bundle, tensors, file=MGG_NO_MEMORY_FILE) if update == "mgg" else None
    entropy, alignment = Entropy(), FeatureAlignment(bundle.source_stats)
    preprocess = Preprocess(spec.mean, spec.std)
    errors = images = 0
    ratios, cosines, worst_layer, flipped = [], [], [], []
    with record_features(model, spec.feature_layers) as features:
        for stream in streams:
            for start in range(0, len(stream.labels), 64):
                x = preprocess(stream.images[start : start + 64])
                labels = torch.as_tensor(stream.labels[start : start + 64])
                batch = Batch([], x, labels)
                logits = model(x)
                errors += (logits.argmax(1) != labels).sum().item()
                images += len(labels)
                losses = entropy(logits, features, batch), alignment(logits, features, batch)
                gradients = torch.stack(
                    [
                        torch.cat([g.flatten() for g in torch.autograd.grad(loss, tensors, retain_graph=True)])
                        for loss in losses
                    ]
                )
                direction, plain = combine(gradients), gradients.sum(0)
                ratios.append((gradients[0].norm() / gradients[1].norm()).item())
                cosines.append(torch.cosine_similarity(gradients[0], gradients[1], dim=0).item())
                per_layer = [
                    torch.cosine_similarity(block[0], block[1], dim=0).item()
                    for block in gradients.split(list(modules.values()), dim=1)
                ]
                worst_layer.append(min(per_layer))
                flipped.append((direction.sign() != plain.sign()).float().mean().item())
                if rule is not None:
                    rule.apply(tensors, direction)
                    continue
                assert optimizer is not None
                for param, part in zip(tensors, direction.split([p.numel() for p in tensors]), strict=True):
                    param.grad = part.view_as(param).clone()
                optimizer.step()
                optimizer.zero_grad()
    model.load_state_dict(source)
    return {
        "error": 100 * errors / images,
        "ratio": statistics.median(ratios),
        "cosine": statistics.median(cosines),
        "worst_layer": statistics.median(worst_layer),
        "flipped": statistics.mean(flipped),
    }


def main(bundle_path: str, data: str, runs: str = DEFAULT) -> None:
    torch.manual_seed(0)
    bundle = load_bundle(Path(bundle_path))
    spec = bundle.spec
    built = build_streams(Path(data), spec.class_names, list(CORRUPTIONS), 5, spec.framing, 500, 0, default_cache_dir())
    streams = [stream.reordered("shuffled", 0) for stream in built]
    print(f"{spec.name}, continual, 15 corruptions × 500 images, batch 64\n")
    print("| update | combination | error (%) | ‖g1‖/‖g2‖ | cos(g1, g2) | lowest layer cosine | signs flipped vs sum |")
    print("|---|---|---|---|---|---|---|")
    for item in runs.split(","):
        name, _, update = item.partition("@")
        r = run(bundle, streams, name, update)
        print(
            f"| {update} | {name} | {r['error']:.2f} | {r['ratio']:.2f} | {r['cosine']:+.2f} | "
            f"{r['worst_layer']:+.2f} | {r['flipped']:.1%} |",
            flush=True,
        )


if __name__ == "__main__":
    main(*sys.argv[1:])

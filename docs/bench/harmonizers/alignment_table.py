"""The table of docs/benchmarks.md, "The alignment's weight and layers", from the bench that
``alignment.sh`` writes: per variant of the alignment, protocol and update, the mean online
error with the plain sum and with GH++, GH++ − sum (negative: GH++ gains), and the conflict GH++ saw
(share of its harmonizing steps with a negative cosine, and their median cosine).

    python docs/bench/harmonizers/alignment_table.py OUT/bench.json
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def main(path: str) -> None:
    result = json.loads(Path(path).read_text())
    errors: dict[tuple[str, str], list[float]] = defaultdict(list)
    cosines: dict[tuple[str, str], list[float]] = defaultdict(list)
    for cell in result["results"]:
        key = (cell["method"], cell["protocol"])
        errors[key].append(cell["error_percent"])
        cosines[key].extend(cell.get("cosines", []))
    mean = {key: statistics.fmean(values) for key, values in errors.items()}
    protocols = list(dict.fromkeys(protocol for _, protocol in errors))
    variants = list(dict.fromkeys(m.split("+", 1)[1] for m, _ in errors if ":sum+" in m))
    for protocol in protocols:
        print(
            f"\n{protocol}: source {mean['source', protocol]:.2f}, tent (entropy alone) {mean['tent', protocol]:.2f}\n"
        )
        print("| alignment | update | sum | GH++ | GH++ − sum | in conflict (GH++) | median cosine in conflict |")
        print("|---|---|---|---|---|---|---|")
        for variant in variants:
            for base in ("harmonized", "mgtta-nomem"):
                plain, harmonized = (mean[f"{base}:{h}+{variant}", protocol] for h in ("sum", "gh++"))
                seen = cosines[f"{base}:gh+++{variant}", protocol]
                apart = [c for c in seen if c < 0]
                share = f"{len(apart) / len(seen):.0%}" if seen else "-"
                median = f"{statistics.median(apart):.2f}" if apart else "-"
                gain = harmonized - plain
                print(f"| {variant} | {base} | {plain:.2f} | {harmonized:.2f} | {gain:+.2f} | {share} | {median} |")


if __name__ == "__main__":
    main(sys.argv[1])

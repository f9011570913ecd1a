"""The table of docs/benchmarks.md ("A small student for the edge") from what
docs/bench/distill/run.sh writes.

    python docs/bench/distill/table.py OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(out: Path) -> None:
    students = {
        kd: json.loads((out / f"student-{kd}" / "distill.json").read_text()) for kd in ("unikd", "plain", "none")
    }
    teacher = students["unikd"]["teacher"]
    parameters = students["unikd"]["student"]["parameters"]
    source = json.loads((out / "source-run" / "summary.json").read_text())
    adapted = json.loads((out / "student-run" / "summary.json").read_text())
    print("| model | parameters | accuracy on the target images (%) |\n|---|---|---|")
    print(f"| unadapted teacher (source, online) | {teacher['parameters']:,} | {100 * source['online_accuracy']:.1f} |")
    size, accuracy = f"{teacher['parameters']:,}", 100 * teacher["target_accuracy"]
    print(f"| adapted teacher ({teacher['bn_stats']} statistics) | {size} | {accuracy:.1f} |")
    started = out / "student-source-run" / "summary.json"
    if started.is_file():
        bundle = Path(students["unikd"]["student"]["started_from"]["bundle"]).name
        accuracy = 100 * json.loads(started.read_text())["online_accuracy"]
        print(f"| student's start `{bundle}`, unadapted (online) | {parameters:,} | {accuracy:.1f} |")
    for kd, report in students.items():
        accuracy = report["curves"]["target_accuracy"][-1]
        print(f"| student `--kd {kd}` | {report['student']['parameters']:,} | {100 * accuracy:.1f} |")
    print(f"| student `--kd unikd`, then `tta-cli adapt` (online) | | {100 * adapted['online_accuracy']:.1f} |")
    latency = json.loads((out / "latency.json").read_text())
    print("\n| batch | teacher ms | student ms | student / teacher |\n|---|---|---|---|")
    for batch, row in latency.items():
        print(f"| {batch} | {row['teacher_ms']} | {row['student_ms']} | {row['ratio']} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]))

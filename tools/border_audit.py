#!/usr/bin/env python3
"""Mean border attention per data set, label and split, from `cxr-triage scan` CSVs.

    cxr-triage scan ../shared/data/cxr3 --no-cache --labels ../shared/data/cxr3/splits.csv \
        --out cxr3.csv
    python3 tools/border_audit.py --scan cxr3.csv --splits ../shared/data/cxr3/splits.csv [...]

Each `--scan` goes with the `--splits` (or labels.csv) after it: paths relative to the set's
folder, columns `path`, `label` and optionally `split`. Prints one row per (set, label): images
scored, the mean `border_attention` over all of them and over the test split, and the share of
images whose map puts more than half its mass on the border band. Standard library only.
"""

import argparse
import csv
import statistics
from collections import defaultdict
from pathlib import Path


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scan", action="append", required=True, help="a scan CSV")
    p.add_argument("--splits", action="append", required=True, help="its splits.csv / labels.csv")
    args = p.parse_args()
    if len(args.scan) != len(args.splits):
        p.error("one --splits per --scan")
    print(f"{'set':<16} {'label':<10} {'n':>5} {'mean':>6} {'test n':>6} {'test':>6} {'>0.5':>6}")
    for scan, splits in zip(args.scan, args.splits):
        name = Path(splits).parent.name
        split_of = {}
        with open(splits, newline="") as f:
            for row in csv.DictReader(f):
                split_of[row["path"]] = (row.get("label", ""), row.get("split", "test"))
        cells = defaultdict(list)
        with open(scan, newline="") as f:
            for row in csv.DictReader(f):
                if row["status"] != "done" or not row["border_attention"]:
                    continue
                label, split = split_of.get(row["path"], (row.get("label", ""), "?"))
                cells[label or "?"].append((float(row["border_attention"]), split))
        for label in sorted(cells):
            values = [v for v, _ in cells[label]]
            test = [v for v, s in cells[label] if s == "test"]
            mean_test = f"{statistics.mean(test):.3f}" if test else "-"
            high = sum(v > 0.5 for v in values) / len(values)
            print(
                f"{name:<16} {label:<10} {len(values):>5} {statistics.mean(values):>6.3f} "
                f"{len(test):>6} {mean_test:>6} {high:>6.1%}"
            )


if __name__ == "__main__":
    main()

"""Two trained bottleneck directories side by side, tensor by tensor: how far apart the weights and buffers are, and
whether the retain statistics each kept are the same counts.

    python benchmarks/compare_bottlenecks.py outputs/data_parallel/one/bottleneck outputs/data_parallel/two/bottleneck

prints one markdown row per tensor (largest absolute difference, and that over the tensor's largest magnitude) and
one per statistics file (equal counts, or how many differ). Nothing is run through a model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from codeunlearn.bottleneck.base import WEIGHTS_NAME
from codeunlearn.io import load_tensors
from codeunlearn.tables import markdown_table


def tensor_rows(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> list[list[str]]:
    """One row per tensor both hold: name, shape, max abs diff, relative (equal integer tensors: 0)."""
    rows = []
    for name in sorted(first.keys() & second.keys()):
        a, b = first[name], second[name]
        if a.shape != b.shape:
            rows.append([name, f"{tuple(a.shape)} vs {tuple(b.shape)}", "shapes differ", "-"])
            continue
        diff = float((a.double() - b.double()).abs().max()) if a.numel() else 0.0
        scale = float(a.double().abs().max()) if a.numel() else 0.0
        rows.append([name, str(tuple(a.shape)), f"{diff:.3g}", f"{diff / scale if scale else 0.0:.3g}"])
    rows += [[name, "only in the first", "-", "-"] for name in sorted(first.keys() - second.keys())]
    rows += [[name, "only in the second", "-", "-"] for name in sorted(second.keys() - first.keys())]
    return rows


def statistics_rows(first: Path, second: Path) -> list[list[str]]:
    """One row per statistics file of the first directory: the same counts in the second, or how many differ."""
    rows = []
    for path in sorted((first / "statistics").glob("*.safetensors")):
        other = second / "statistics" / path.name
        if not other.is_file():
            rows.append([f"statistics/{path.name}", "missing in the second", "-"])
            continue
        a, b = load_tensors(path, "statistics"), load_tensors(other, "statistics")
        differing = sum(int((a[k] != b[k]).sum()) for k in a if k in b and a[k].shape == b[k].shape)
        total = sum(int(a[k].sum()) for k in a)
        rows.append([f"statistics/{path.name}", f"{total:,} firings", f"{differing} counts differ"])
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("first", type=Path, help="a bottleneck directory")
    parser.add_argument("second", type=Path, help="another bottleneck directory of the same shape")
    args = parser.parse_args(argv)
    first = load_tensors(args.first / WEIGHTS_NAME, "bottleneck weights")
    second = load_tensors(args.second / WEIGHTS_NAME, "bottleneck weights")
    print(
        markdown_table(["tensor", "shape", "max abs diff", "relative to max abs"], tensor_rows(first, second), "llrr")
    )
    print()
    print(markdown_table(["statistics", "counted", "agreement"], statistics_rows(args.first, args.second)))


if __name__ == "__main__":
    main()

"""How many codes to remove, by a rule fixed before any held-out number is seen.

The rule: the largest N on a fixed grid whose edit raises the loss on *validation* retain text (train-split text
that neither the bottleneck nor the retain statistics read) by at most `max_retain_cost` nat/token over the
unedited bottleneck. The grid is walked upwards and stops at the first N over budget, so each step costs one
forward pass over the validation text. Held-out documents are never read, so the held-out table that follows is
an honest test of the chosen N.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from codeunlearn.bottleneck.edit import Edit
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.errors import CodeunlearnError
from codeunlearn.evaluate.evaluation import mean_loss
from codeunlearn.unlearn.selection import truncate

# Codes per layer tried, in order; a grid fixed in advance (about x1.5 apart), cut at the edit's size.
GRID = (128, 256, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192, 12288, 16384, 24576, 32768)


@dataclass
class BudgetStep:
    """One point of the walk: N codes per layer and the validation retain loss increase it costs."""

    num_codes: int
    retain_cost: float


def walk(grid: list[int], cost_of: Callable[[int], float], max_retain_cost: float) -> list[BudgetStep]:
    """Measure `cost_of(N)` up the grid, stopping after the first N over budget; returns every step measured."""
    if max_retain_cost <= 0:
        raise CodeunlearnError(f"max_retain_cost={max_retain_cost}", "use a positive loss budget, e.g. 0.05")
    steps: list[BudgetStep] = []
    for num_codes in grid:
        steps.append(BudgetStep(num_codes, cost_of(num_codes)))
        if steps[-1].retain_cost > max_retain_cost:
            break
    if steps[0].retain_cost > max_retain_cost:
        raise CodeunlearnError(
            f"removing {grid[0]} codes already costs {steps[0].retain_cost:+.3f} nat/token on validation retain text "
            f"(budget {max_retain_cost})",
            "raise --max_retain_cost or check that the retain text is general text",
        )
    return steps


def choose_num_codes(
    bmodel: BottleneckedModel,
    edit: Edit,
    validation: Tensor,
    max_retain_cost: float,
    batch_size: int = 8,
    bf16: bool = False,
    grid: tuple[int, ...] = GRID,
) -> tuple[Edit, list[BudgetStep]]:
    """The top-N prefix of `edit` (scored, ranked) for the largest grid N within the retain budget, and the walk.

    `edit` holds the ranked candidates (select them with the largest N wanted); the grid is cut at its size. The
    bottleneck's own active edits are removed while the walk runs and put back after. Refused when even the
    smallest N is over budget.
    """
    largest = max(len(codes.codes) for codes in edit.layers.values())
    points = [n for n in grid if n < largest] + [largest]
    saved = list(bmodel.edits)
    bmodel.clear_edits()
    try:
        reference = mean_loss(bmodel, validation, batch_size, bf16=bf16)

        def cost_of(num_codes: int) -> float:
            with bmodel.edited(truncate(edit, num_codes)):
                return mean_loss(bmodel, validation, batch_size, bf16=bf16) - reference

        steps = walk(points, cost_of, max_retain_cost)
    finally:
        for kept in saved:
            bmodel.apply_edit(kept)
    chosen = max(step.num_codes for step in steps if step.retain_cost <= max_retain_cost)
    return truncate(edit, chosen), steps


def describe_walk(steps: list[BudgetStep], max_retain_cost: float) -> str:
    """One line: the walk, with the chosen N marked."""
    chosen = max(s.num_codes for s in steps if s.retain_cost <= max_retain_cost)
    parts = [f"{s.num_codes}{'*' if s.num_codes == chosen else ''}: {s.retain_cost:+.4f}" for s in steps]
    return f"retain cost on validation text by codes per layer (budget {max_retain_cost}): " + ", ".join(parts)

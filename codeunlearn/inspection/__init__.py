"""Inspection: what the units an edit removes fire on and what they write, as pages a reader can check.

For every code (codebook) or feature (SAE) of an edit, and of its random-codes control, `inspect_edit` measures its
firing frequency on the forget and the retain text (as `codeunlearn stats` counts it), keeps its strongest firings
as token windows (a running top-k per unit: bounded memory), for SAE features an activation histogram, and reads its
output vector through the final norm and LM head (the logit lens, direct path only). `page` renders the resulting
`InspectionReport` as one self-contained HTML page, Markdown and a terminal table; `codeunlearn inspect` writes them.

A layer above `unlearn/` (it may import `unlearn/`, `evaluate/`, `bottleneck/` and the shared modules; today it
needs `bottleneck/` and the shared modules only); nothing below it imports it, and it never imports `cli/`.

Modules, one job each:

- `contexts.py`: `TopFirings` (running top-k firings per unit), `Context` and `context_window` (token windows).
- `histogram.py`: `ActivationHistograms` (exact counts in fixed log bins), `Histogram`.
- `logit_lens.py`: `final_norm`, `lm_head`, `direct_logits`, `logit_effects`.
- `collect.py`: `observe_units`, the one pass over a corpus that watches the units.
- `report.py`: `inspect_edit` and the report dataclasses (`InspectionReport`, `UnitReport`, `CorpusFiring`).
- `page.py`: `render_html`, `render_markdown`, `render_terminal`.
"""

from codeunlearn.inspection.report import (
    CorpusFiring,
    EditInfo,
    InspectionReport,
    InspectOptions,
    UnitReport,
    inspect_edit,
)

__all__ = ["CorpusFiring", "EditInfo", "InspectOptions", "InspectionReport", "UnitReport", "inspect_edit"]

"""The bottleneck kinds, one folder each (SAELens style: a kind's inference and training classes kept together), and
the one place they are registered (`codeunlearn.bottleneck.registry`), under the `kind` string a
`bottleneck_config.json` records:

- `codebook/` (`kind="vq"`): `CodebookConfig`, `CodebookBottleneck` (+ `kmeans`), `CodebookTrainer`;
- `sae/` (`kind="sae"`): `SAEConfig`, `SAEBottleneck` (+ `interventions`, `attach_sae` for sae-lens directories),
  `SAETrainer`.

Adding a kind (a transcoder, say) is one folder here and one `register_kind` line below. `import codeunlearn` runs
this module, so the registry is filled wherever the package is used; `bottleneck/` and `train/` below it look kinds
up only at call time.
"""

from codeunlearn.bottleneck.registry import all_interventions, kind_names, register_kind
from codeunlearn.kinds.codebook import CodebookBottleneck, CodebookConfig, CodebookTrainer
from codeunlearn.kinds.sae import SAEBottleneck, SAEConfig, SAETrainer, attach_sae

register_kind(CodebookBottleneck, CodebookConfig, CodebookTrainer())
register_kind(SAEBottleneck, SAEConfig, SAETrainer())

KINDS = kind_names()
INTERVENTIONS = all_interventions()

__all__ = [
    "INTERVENTIONS",
    "KINDS",
    "CodebookBottleneck",
    "CodebookConfig",
    "CodebookTrainer",
    "SAEBottleneck",
    "SAEConfig",
    "SAETrainer",
    "attach_sae",
]

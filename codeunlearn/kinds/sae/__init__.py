"""The sparse-autoencoder kind (`kind="sae"`): a sae-lens SAE on the residual stream after each layer.

- `config`: `SAEConfig`, its fields and what it says of itself (units, interventions, card text);
- `bottleneck`: `SAEBottleneck`, the module at one layer with its error term and splices; loading sae-lens and
  Gemma Scope directories and attaching them to a model (`attach_sae`);
- `interventions`: what an SAE edit does to feature activations (pure tensor functions);
- `trainer`: `SAETrainer`: sae-lens training passes, dead-feature tracking.
"""

from codeunlearn.kinds.sae.bottleneck import SAEBottleneck, attach_sae
from codeunlearn.kinds.sae.config import SAEConfig
from codeunlearn.kinds.sae.trainer import SAETrainer

__all__ = ["SAEBottleneck", "SAEConfig", "SAETrainer", "attach_sae"]

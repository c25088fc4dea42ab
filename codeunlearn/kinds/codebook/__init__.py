"""The codebook kind (`kind="vq"`): a multi-head residual vector quantizer at each layer.

- `config`: `CodebookConfig`, its fields and what it says of itself (units, bits per token, card text);
- `bottleneck`: `CodebookBottleneck`, the module at one layer; flat code ids;
- `kmeans`: nearest-key search and chunked k-means in fp32;
- `trainer`: `CodebookTrainer`: k-means keys, EMA key steps, value training.
"""

from codeunlearn.kinds.codebook.bottleneck import CodebookBottleneck
from codeunlearn.kinds.codebook.config import CodebookConfig
from codeunlearn.kinds.codebook.trainer import CodebookTrainer

__all__ = ["CodebookBottleneck", "CodebookConfig", "CodebookTrainer"]

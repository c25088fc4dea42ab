"""codeunlearn: train a discrete bottleneck into a frozen causal LM once, then forget any topic in seconds."""

__version__ = "0.1.0"

# The bottleneck kinds register themselves (`codeunlearn.bottleneck.registry`) wherever the package is used.
import codeunlearn.kinds  # noqa: F401

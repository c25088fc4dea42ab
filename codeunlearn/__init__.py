"""codeunlearn: train a discrete bottleneck into a frozen causal LM once, then forget any topic in seconds."""

__version__ = "0.1.0"

"""Measuring a model: loss tables and bottleneck fidelity, the evaluation suite, its metrics and its attacks."""

"""The bottleneck kinds and what wraps them around a frozen causal LM: configs, the per-layer modules (codebook,
SAE), `BottleneckedModel`, edits and the interventions they compile to."""

"""The self-contained modeling file copied into every exported model directory (imports only torch/transformers)."""

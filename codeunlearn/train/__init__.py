"""Training a bottleneck into a frozen causal LM (`train_bottleneck`)."""

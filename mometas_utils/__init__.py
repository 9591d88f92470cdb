"""mometas_utils: multi-objective continual pre-training with a meta-learned objective sampler."""

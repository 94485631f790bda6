"""What both recipes share and no model knows about: config loading, checkpoints, metrics,
the NaN guard, the feature cache and periodic validation."""

"""Training: VisionBridgeTrainer, its arguments, data formats, collator and callbacks."""

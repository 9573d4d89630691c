"""Orchestration: local worker pools and Slurm arrays for training, fine-tuning, predict and FNA parts, labelling."""

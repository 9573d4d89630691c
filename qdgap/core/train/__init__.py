"""Training one ensemble member, top to bottom."""

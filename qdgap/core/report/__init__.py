"""The HTML report: its sections and its figures (arrays in, matplotlib Figure out)."""

"""ALIGNN's bond graph and line graph for a whole trajectory, and their cache."""

"""Models trained by upstream ALIGNN, imported as qdgap members."""

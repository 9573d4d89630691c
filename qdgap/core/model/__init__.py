"""The band-gap model (GapModel) built from upstream ALIGNN's pure-torch layers."""

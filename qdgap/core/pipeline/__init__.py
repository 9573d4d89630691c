"""The whole study as resumable stages: ``qdgap pipeline`` (stages.py's rule, study.py's stages) and
``qdgap reproduce`` (the original study on its own DFT data, reproduce.py). The top room: it sequences
workflow, analysis and report, and nothing imports it but the CLI."""

"""Where things live: the run-folder contract, the work-folder layout, the one writer of result files."""

"""Trajectories: the in-memory Trajectory and its HDF5 file, importers of structures and labels, the one split."""

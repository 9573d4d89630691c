"""Test support that ships with the package: synthetic trajectories and fault points (QDGAP_TEST_KILL)."""

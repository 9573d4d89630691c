"""The ``qdgap`` command line: parsing, progress and exit codes. No science here."""

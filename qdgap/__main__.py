"""``python -m qdgap`` runs the command-line interface."""

from qdgap.cli.app import main

if __name__ == "__main__":
    main()

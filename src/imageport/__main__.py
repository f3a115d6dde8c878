"""``python -m imageport`` runs the command line."""

from imageport.cli.main import main

main()

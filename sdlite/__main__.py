"""`python -m sdlite` runs the command line."""

from sdlite.cli.app import main

main()

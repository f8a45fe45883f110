"""`python -m sdlite` runs the command line."""

from sdlite.cli import main

main()

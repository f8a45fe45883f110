"""The `sdlite` command line: the app (app.py), one module per command group, shared options, and the mapping
from failures to one-line errors and exit codes (failures.py).

Each command declares its options (the shared ones come from options.py, a config's own from its fields),
builds one frozen config and hands it to a core function. Heavy libraries (torch, diffusers) are imported
inside the commands, so `--help` and usage errors answer instantly.
"""

from __future__ import annotations


def main() -> None:
    """Console-script entry point (`sdlite`): see sdlite/cli/app.py."""
    from sdlite.cli.app import main as run

    run()

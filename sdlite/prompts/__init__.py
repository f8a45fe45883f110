"""Prompts as A1111 users write them: emphasis and BREAK (emphasis.py), prompt editing and alternation (editing.py),
75-token chunks (chunks.py), the conditioning each text encoder gives (conditioning.py), a batch's conditioning at
each denoising step (per_step.py), and `sdlite prompt`'s reading of a prompt (reading.py, config.py)."""

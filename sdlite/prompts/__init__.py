"""Prompts as A1111 users write them: emphasis, BREAK, prompt editing and alternation (issue 24)."""

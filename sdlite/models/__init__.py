"""Models: finding and loading them (folders, hub ids, single files), presets made offline, the tokenizer,
`info`, memory estimates, `export`, and which model a command uses by default."""

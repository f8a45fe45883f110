"""`sdlite lora`: tools over LoRA files (bake into a model)."""

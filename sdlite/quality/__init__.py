"""Quality: golden-image regression checks (`sdlite check`) and the built-in shapes evaluation (`sdlite eval`)."""

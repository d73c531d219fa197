"""Static scanner for model and pickle files: never executes what it reads."""

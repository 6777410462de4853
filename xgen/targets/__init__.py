"""One module per launch target; each builds a context from the config and renders one template."""

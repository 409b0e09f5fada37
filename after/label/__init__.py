"""People label the clips a run queries: the label store, the web app, and file exchange."""

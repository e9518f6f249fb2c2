"""Consumer-group workers: the generic group reader and the handlers that run under it."""

class ProcessingError(Exception):
    """A submitted form that cannot be processed (the host answers it with an error)."""

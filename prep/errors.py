class PrepError(Exception):
    """A problem with the input or the output folder, reported as one clear message."""

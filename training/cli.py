"""Training commands, registered into ``landslide-batch`` through an entry point."""


def register(sub) -> None:
    """Add training's commands to the ``landslide-batch`` parser."""

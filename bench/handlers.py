"""The zero-work task both systems run."""


def zero(event, context):
    return {}


async def azero(event, context):
    """The same zero-work task as an async handler (runs on the worker's loop, no thread hop)."""
    return {}

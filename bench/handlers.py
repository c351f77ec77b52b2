"""The zero-work task both systems run."""


def zero(event, context):
    return {}


async def azero(event, context):
    """The same zero-work task as an async handler (runs on the worker's loop, no thread hop)."""
    return {}


def sleep(event, context):
    """A task that takes `seconds` of wall time (a long computation, as far as scheduling goes)."""
    import time

    time.sleep(event["seconds"])
    return {"slept": event["seconds"]}

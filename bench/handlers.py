"""The zero-work task both systems run."""


def zero(event, context):
    return {}

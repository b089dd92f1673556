class UsageError(Exception):
    """Bad input from the user: the CLI prints the message on one line and exits with status 2."""


def first_line(e: BaseException) -> str:
    """An exception's message in one line, for a one-line error (its type where it has no message)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__

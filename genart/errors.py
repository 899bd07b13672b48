"""User-facing errors: one paragraph saying what was wrong and how to fix it, no traceback."""


class UserError(Exception):
    """A mistake in the user's input or environment; printed as one paragraph, exit code 2."""

"""Errors a user can fix (bad config, path, input): CLIs print one line, exit 2."""


class UserError(ValueError):
  """A mistake the user can fix; the message names what to fix."""

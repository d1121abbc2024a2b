"""The one exception type for problems a user can fix (bad path, bad file,
unsupported architecture, existing output). The CLI prints it as one line."""


class ConvertError(ValueError):
  """A checkpoint cannot be converted; the message names what to fix."""

"""The convert package's error for problems a user can fix (bad path, bad
file, unsupported architecture, existing output): a `famjax.errors.UserError`,
which the CLI prints as one line."""
from famjax.errors import UserError


class ConvertError(UserError):
  """A checkpoint cannot be converted; the message names what to fix."""

"""The one exception type for bad user input.

Raised anywhere (flags, paths, CSV files, images, checkpoints) and turned into a single
`error: ...` line with exit status 2 by the entry point, never into a traceback.
"""


class UserError(Exception):
    """A problem the user can fix; the message names it and says how."""

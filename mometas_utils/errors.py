"""The one exception type the scripts turn into a one-line error.

Anything a user can get wrong (a flag, a file, a column) raises :class:`MometasInputError`
with a message that names the flag or file and says what was expected. The scripts catch
it at the top level and print ``error: <message>`` instead of a traceback.
"""


class MometasInputError(ValueError):
    """Bad user input: the message names the flag or file and what was expected."""

"""The one exception type a user should see: a problem they can fix, said in one line."""


class TextclfError(Exception):
    """A bad input (config value, archive, URL, missing file) reported as one actionable line.

    Stage entry points catch it, print ``error: <message>`` to stderr and exit with status 1;
    anything else is a bug and keeps its traceback.
    """

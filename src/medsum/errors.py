"""The one exception medsum raises for anything a user can fix: the CLI prints its message on one line."""


class MedsumError(Exception):
    """A problem with the user's input (config, data, model name, run directory) described in one line."""

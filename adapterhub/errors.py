"""The one error hierarchy of adapterhub: every message says what was wrong and what to do."""


class AdapterHubError(Exception):
    """Base class of every error adapterhub raises on purpose."""


class PluginError(AdapterHubError):
    """A plugin could not be loaded, or two plugins claim the same name."""


class UnknownNameError(AdapterHubError):
    """A method, kernel or quantizer name that no installed plugin provides."""


class OptionError(AdapterHubError):
    """An option that the chosen method or command does not accept, or a value of the wrong type."""


class IncompatibleBaseError(AdapterHubError):
    """An adapter trained on one base model was asked to load onto another."""


class DataError(AdapterHubError):
    """A dataset file that is missing, empty or lacks the expected columns."""

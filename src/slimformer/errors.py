"""Typed errors. The CLI turns each into one line on stderr and a non-zero exit."""


class SlimformerError(Exception):
    """Base class: anything the user can fix by changing their input."""


class ModelNotFoundError(SlimformerError):
    """The model path does not exist or is not a model folder."""


class UnsupportedArchitectureError(SlimformerError):
    """The model loads, but no adapter in arch.py describes it."""


class RecipeError(SlimformerError):
    """A recipe step is unknown, has a bad argument, or is out of order."""


class BudgetError(SlimformerError):
    """A budget cannot be met (keep more than exists, flops <= 0, rank too large...)."""


class OutputExistsError(SlimformerError):
    """The output folder exists and --force was not given."""


class DataNotFoundError(SlimformerError):
    """An evaluation or calibration file is missing."""

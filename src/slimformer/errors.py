"""Typed errors. The CLI turns each into one line on stderr and a non-zero exit."""


class SlimformerError(Exception):
    """Base class: anything the user can fix by changing their input."""


class ModelNotFoundError(SlimformerError):
    """The model path does not exist or is not a model folder."""


class WeightsError(SlimformerError):
    """A weights file is there but does not read as safetensors (truncated, corrupt), or does not fit the model."""


class UnsupportedArchitectureError(SlimformerError):
    """The model loads, but no adapter in arch.py describes it."""


class RecipeError(SlimformerError):
    """A recipe step is unknown, has a bad argument, or is out of order."""


class BudgetError(SlimformerError):
    """A budget cannot be met by this model (keep more than exists, a rank larger than a weight allows...)."""


class StepNotApplicableError(SlimformerError):
    """A step cannot run on the model as it stands: an earlier compression already replaced what the step works on
    (e.g. `vocab` on a token table that is already vocabulary-pruned or quantized)."""


class PoolingError(SlimformerError):
    """A pooling mode slimformer does not implement (it has mean, cls and max)."""


class OutputExistsError(SlimformerError):
    """The output folder exists and --force was not given."""


class DataNotFoundError(SlimformerError):
    """An evaluation or calibration file is missing."""


class DataFormatError(SlimformerError):
    """An evaluation or calibration file exists but does not read as its format (header, columns, text encoding)."""


class KernelUnavailableError(SlimformerError):
    """An int8 kernel forced (SLIMFORMER_INT8_KERNEL) that this CPU or build cannot run correctly."""


class CoverageWarning(UserWarning):
    """The calibration text covers little of what a step keeps or measures (vocab: the model's vocabulary); the CLI
    prints it as one `warning:` line."""

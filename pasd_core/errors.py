"""Exceptions whose messages a ComfyUI or CLI user can act on."""


class PASDError(Exception):
    """Base of every error this pack raises on purpose; the message is meant for the user."""


class ModelError(PASDError):
    """A checkpoint is missing, corrupt, or not what it claims to be."""


class ModelMismatchError(ModelError, ValueError):
    """Model files that do not belong together (a base, personalized model or LoRA of the other family): the user's
    choice to change, so the CLI treats it as bad input."""


class ModelNotFoundError(ModelError, FileNotFoundError):
    """A model name resolves to nothing in the models folders (a FileNotFoundError, as ComfyUI's loaders raise)."""


class InputImageError(PASDError):
    """An input image cannot be read or has an unusable shape."""


class Interrupted(PASDError):
    """The caller asked the run to stop (ComfyUI's cancel button, Ctrl-C)."""

"""lepton-vision: from a YAML recipe to a cross-validated, exported vision model.

Importing this package is cheap: TensorFlow, Keras and Gradio are imported only by the
modules that need them, inside the functions that need them.
"""

from lepton_vision.version import __version__

__all__ = ["Predictor", "__version__"]


def __getattr__(name: str):  # PEP 562: ``from lepton_vision import Predictor`` stays cheap
    if name == "Predictor":
        from lepton_vision.serve.loader import Predictor

        return Predictor
    raise AttributeError(f"module 'lepton_vision' has no attribute {name!r}")

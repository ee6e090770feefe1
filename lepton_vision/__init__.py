"""lepton-vision: from a YAML recipe to a cross-validated, exported vision model.

Importing this package is cheap: TensorFlow, Keras and Gradio are imported only by the
modules that need them, inside the functions that need them.
"""

__version__ = "0.1.0"


def __getattr__(name: str):  # PEP 562: ``from lepton_vision import Predictor`` stays cheap
    if name == "Predictor":
        from lepton_vision.kinds.classification.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'lepton_vision' has no attribute {name!r}")

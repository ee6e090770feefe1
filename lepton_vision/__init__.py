"""lepton-vision: from a YAML recipe to a cross-validated, exported vision model.

Importing this package is cheap: TensorFlow, Keras and Gradio are imported only by the
modules that need them, inside the functions that need them.
"""

__version__ = "0.1.0"

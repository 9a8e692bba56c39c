"""chargen: train recurrent neural networks on text and generate new text from them."""

__version__ = "0.1.0"

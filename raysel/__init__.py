"""raysel: choose what an LLM should be fine-tuned on, with the model as the judge, on Ray."""

__version__ = "0.1.0"

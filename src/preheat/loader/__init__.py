"""Model loading: find a model's files (``model_path``), read its config and weights from a
GGUF file or a Hugging Face folder (``model_loader.load_model``), cache converted weights.

Importing the package loads nothing heavy: ``model_path``, ``embedded`` and ``errors``
are torch-free, for the API process; ``model_loader`` and the format readers use torch.
"""

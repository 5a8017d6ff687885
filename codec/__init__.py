"""sicc: a learned progressive image codec. Library API: `encode_image`, `decode_image`, `truncate`."""

__version__ = "0.1.0"

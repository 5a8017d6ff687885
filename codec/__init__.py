"""sicc: a learned progressive image codec.

Library API: `encode_image`, `decode_image`, `truncate` (see codec.api); `codec.container` parses
`.sic` files without importing torch, so the API is loaded on first use.
"""

__version__ = "0.1.0"
__all__ = ["encode_image", "decode_image", "truncate"]


def __getattr__(name):
    if name in __all__:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'codec' has no attribute {name!r}")

"""Lab 05's CLIP helpers in one import: ``from labutils.clip_embed import load_clip, ...``.

The code lives in the :mod:`labutils.clip` package; this module is its stable public name.
"""
from .clip import *  # noqa: F401,F403
from .clip import __all__  # noqa: F401

"""``load_clip``: OpenAI's CLIP when its weights can be had, else the local stand-in.

The search order is in :mod:`.encoder`'s docstring. This module sits above both the encoder
(real weights) and the stand-in (trained here), so neither imports the other's policy.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional

from ..config import ConfigError
from .encoder import (DEFAULT_MODEL, ClipEncoder, ClipUnavailableError, download_root_dir, clip,
                      fetch_model, load_checkpoint)
from .standin import load_standin


def load_clip(name_or_path: Optional[str] = None, device=None, download_root=None,
              allow_standin: bool = True, **standin_kwargs) -> ClipEncoder:
    """OpenAI's CLIP (default ViT-B/32), or a local stand-in when its weights cannot be had.

    ``standin_kwargs`` go to :func:`labutils.clip.standin.load_standin` (``flowers_dir``,
    ``cache_dir``, ``profile``...). See the module docstring for the search order.
    """
    name = name_or_path or os.environ.get("LABUTILS_CLIP_MODEL") or DEFAULT_MODEL
    if name not in clip.available_models():
        if not Path(name).expanduser().is_file():
            raise ClipUnavailableError(
                f"{name!r} is neither a CLIP model name ({', '.join(clip.available_models())}) "
                "nor an existing checkpoint file")
        return load_checkpoint(name, device)
    try:
        path = fetch_model(name, download_root)
        enc = load_checkpoint(path, device)
        enc.model_id = name
        return enc
    except ConfigError:   # a bad LABUTILS_CLIP_OFFLINE is the user's to fix, not a stand-in's
        raise
    except Exception as err:  # offline, proxy, disk, corrupt file...
        reason = f"{type(err).__name__}: {err}"
    where = download_root_dir(download_root)
    help_text = (f"CLIP {name} weights could not be loaded ({reason}). To use the real model, "
                 f"run `labutils.clip.load_clip()` once where there is internet (e.g. a "
                 f"login node) with the same download_root ({where}), or point "
                 "LABUTILS_CLIP_MODEL at a checkpoint file.")
    if not allow_standin:
        raise ClipUnavailableError(help_text)
    enc = load_standin(device=device, **standin_kwargs)
    banner = "!" * 78
    print(f"{banner}\n!! {help_text}\n!! USING A LOCAL STAND-IN: {enc.describe()}\n"
          f"!! It was trained here on the flower photos only; its features are NOT CLIP "
          f"ViT-B/32's.\n{banner}", flush=True)
    warnings.warn(f"CLIP {name} unavailable: using a local stand-in CLIP", stacklevel=2)
    return enc

"""A CLIP model (OpenAI's ``clip`` package) from a file, and encoding prompts and images with it.

:func:`labutils.clip.load_clip` (in :mod:`.load`) picks the weights, in order:
1. ``name_or_path`` (argument), else ``LABUTILS_CLIP_MODEL``, else ``"ViT-B/32"``;
2. a model name is looked up in ``download_root`` (argument, else ``LABUTILS_CLIP_DOWNLOAD_ROOT``,
   else clip's ``~/.cache/clip``) and downloaded there when missing (needs internet: on a cluster
   whose compute nodes are offline, run ``load_clip()`` once on a login node to pre-stage it;
   ``LABUTILS_CLIP_OFFLINE=1`` skips the download attempt);
3. when a model *name* cannot be loaded and ``allow_standin`` is true, a small local stand-in
   CLIP trained on the flower photos (:mod:`labutils.clip.standin`), announced loudly.
A checkpoint *path* that cannot be loaded is always an error (you asked for that file).

Every checkpoint goes through one loader here, :func:`load_checkpoint`: an OpenAI TorchScript
archive or a plain state dict (read with ``torch.load(weights_only=True)``), built with
``clip.model.build_model``. Only give CLIP files you trust: a TorchScript archive is opened
with ``torch.jit.load`` only when its SHA-256 is one that OpenAI published (``clip``'s model
table); any other file must be a plain state dict, which loads without running code. (``clip.load`` itself fails on a plain state dict with current torch:
it reuses the file handle after its TorchScript attempt.)
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import socket
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
from PIL import Image

with warnings.catch_warnings():  # clip imports pkg_resources, which warns about itself
    warnings.simplefilter("ignore")
    import clip
    import clip.model
    from clip.model import build_model

from ..config import env_switch, get_device
from ..modules import count_parameters

DEFAULT_MODEL = "ViT-B/32"
EMBED_DIM = 512          # ViT-B/32's feature size; the lab-05 U-Net's c_embed_dim
DOWNLOAD_TIMEOUT_S = 30  # an offline node that drops packets should not hang the lab


class PromptError(ValueError):
    """A prompt list CLIP cannot encode: empty, not text, or longer than the 77-token context."""


class ClipUnavailableError(RuntimeError):
    """No CLIP model could be loaded; the message says what was tried and how to fix it."""


@dataclasses.dataclass
class ClipEncoder:
    """A loaded CLIP model with the preprocessing that goes with it.

    ``encode_text`` / ``encode_images`` return CLIP's raw features as float32 ``[n, 512]`` (the
    course feeds them unnormalised to the U-Net as context); ``similarity`` normalises them.
    """

    model: torch.nn.Module
    preprocess: Callable[[Image.Image], torch.Tensor]
    model_id: str             # "ViT-B/32", or what a checkpoint's sidecar calls it
    fingerprint: str          # sha256 of the weight file: ties caches to these exact weights
    is_standin: bool = False
    device: torch.device = torch.device("cpu")
    info: Dict = dataclasses.field(default_factory=dict)   # the stand-in's training report
    batch_size: int = 64

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[1])

    @property
    def context_length(self) -> int:
        return int(self.model.context_length)

    def tokenize(self, prompts: Union[str, Sequence[str]], truncate: bool = False) -> torch.Tensor:
        """CLIP tokens ``[n, 77]``; a too-long prompt is an error (or cut, with a warning)."""
        prompts = check_prompts(prompts)
        too_long = [p for p in prompts if _n_tokens(p) > self.context_length]
        if too_long and not truncate:
            raise PromptError(
                f"{len(too_long)} prompt(s) longer than CLIP's {self.context_length}-token "
                f"context, e.g. {too_long[0][:80]!r}... ({_n_tokens(too_long[0])} tokens). "
                "Shorten them, or pass truncate=True to cut them.")
        for p in too_long:
            warnings.warn(f"prompt cut to CLIP's {self.context_length} tokens: {p[:60]!r}...",
                          stacklevel=3)
        return clip.tokenize(prompts, self.context_length, truncate=True)

    @torch.no_grad()
    def encode_text(self, prompts: Union[str, Sequence[str]],
                    truncate: bool = False) -> torch.Tensor:
        """Raw text features, float32 ``[n, embed_dim]`` on the CPU."""
        tokens = self.tokenize(prompts, truncate)
        self.model.eval()
        out = [self.model.encode_text(tokens[i:i + self.batch_size].to(self.device)).float().cpu()
               for i in range(0, len(tokens), self.batch_size)]
        return torch.cat(out)

    @torch.no_grad()
    def encode_images(self, images: Sequence[Union[Image.Image, str, Path]]) -> torch.Tensor:
        """Raw image features, float32 ``[n, embed_dim]``; items are PIL images or file paths."""
        images = list(images)
        if not images:
            raise ValueError("encode_images needs at least one image")
        self.model.eval()
        out = []
        for i in range(0, len(images), self.batch_size):
            batch = torch.stack([self.preprocess(_open_rgb(im))
                                 for im in images[i:i + self.batch_size]])
            out.append(self.model.encode_image(batch.to(self.device)).float().cpu())
        return torch.cat(out)

    def similarity(self, images, prompts) -> torch.Tensor:
        """Cosine similarity ``[n_images, n_prompts]`` of the normalised encodings."""
        img = normalise(self.encode_images(images))
        txt = normalise(self.encode_text(prompts))
        return img @ txt.T

    def describe(self) -> str:
        kind = "LOCAL STAND-IN (not OpenAI's CLIP)" if self.is_standin else "OpenAI CLIP"
        return (f"{kind} {self.model_id}: {count_parameters(self.model):,} parameters, "
                f"{self.embed_dim}-d features, input {self.model.visual.input_resolution}px, "
                f"weights sha256 {self.fingerprint[:12]}, on {self.device}")


def normalise(x: torch.Tensor) -> torch.Tensor:
    """Unit-length rows (for cosine similarity)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def check_prompts(prompts) -> List[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise PromptError("the prompt list is empty: give at least one prompt")
    bad = [p for p in prompts if not isinstance(p, str)]
    if bad:
        raise PromptError(f"prompts must be strings, got {type(bad[0]).__name__}: {bad[0]!r}")
    return prompts


def _n_tokens(prompt: str) -> int:
    """Tokens CLIP needs for ``prompt``, start and end markers included."""
    from clip.clip import _tokenizer
    return len(_tokenizer.encode(prompt)) + 2


def _open_rgb(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    with Image.open(image) as im:
        return im.convert("RGB")


# --- checkpoints ---------------------------------------------------------------------------------

_FINGERPRINTS: Dict[tuple, str] = {}


def file_fingerprint(path) -> str:
    """sha256 of a file's bytes (remembered per path, size and mtime: hashing ViT-B/32 takes ~1 s)."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _FINGERPRINTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _FINGERPRINTS[key] = h.hexdigest()
    return _FINGERPRINTS[key]


def sidecar_path(checkpoint) -> Path:
    """``<checkpoint>.json``: what a checkpoint is (model id, stand-in or not, its report)."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name + ".json")


def openai_sha256s() -> Dict[str, str]:
    """SHA-256 -> model name of the files OpenAI published (from ``clip``'s download URLs)."""
    return {url.split("/")[-2]: name for name, url in clip.clip._MODELS.items()}


def read_state_dict(path) -> Dict[str, torch.Tensor]:
    """The weights of a CLIP checkpoint: OpenAI's TorchScript archive or a plain state dict.

    ``torch.jit.load`` can run arbitrary TorchScript, so it is used only for a file whose
    SHA-256 is one of OpenAI's published files; every other file is read as a state dict with
    ``weights_only=True``.
    """
    path = Path(path)
    if file_fingerprint(path) in openai_sha256s():
        with warnings.catch_warnings():  # torch.jit.load's deprecation notice
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(path), map_location="cpu").state_dict()
    try:
        with warnings.catch_warnings():  # "looks like a TorchScript archive": refused below
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ClipUnavailableError(
            f"{path} is not a state dict torch can read safely ({type(err).__name__}), and not "
            "one of OpenAI's published CLIP files (SHA-256 checked): labutils does not run other "
            "TorchScript. Save its weights with torch.save(model.state_dict(), ...) and pass "
            "that file") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or "text_projection" not in state:
        raise ClipUnavailableError(f"{path} holds no CLIP weights (no 'text_projection' entry)")
    return state


def load_checkpoint(path, device=None) -> ClipEncoder:
    """Build a :class:`ClipEncoder` from a checkpoint file (the one code path for every file)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ClipUnavailableError(f"CLIP checkpoint {path} does not exist")
    device = get_device(device)
    state = read_state_dict(path)
    try:
        model = build_model(state).to(device)
    except Exception as err:
        raise ClipUnavailableError(f"{path}: the weights do not fit clip.model.CLIP: {err}") from err
    if device.type == "cpu":
        model.float()  # build_model makes fp16 layers; the CPU computes in float32 (as clip.load)
    meta, fingerprint = {}, file_fingerprint(path)
    if sidecar_path(path).is_file():
        meta = json.loads(sidecar_path(path).read_text())
        if meta.get("weights_sha256", fingerprint) != fingerprint:
            warnings.warn(f"{sidecar_path(path)} describes other weights than {path}; "
                          "ignoring it", stacklevel=2)
            meta = {}
    enc = ClipEncoder(model=model.eval(), preprocess=clip.clip._transform(
                          model.visual.input_resolution),
                      model_id=meta.get("model_id", f"file:{path.name}"),
                      fingerprint=fingerprint, is_standin=bool(meta.get("standin")),
                      device=device, info=meta)
    return enc


def save_checkpoint(model: torch.nn.Module, path, meta: Optional[dict] = None) -> Path:
    """Write ``model``'s weights as a plain state dict (+ sidecar ``meta``), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save(state, tmp)
    if meta is not None:
        # The sidecar names the weights it describes (two writers racing cannot mismatch them).
        meta = dict(meta, weights_sha256=file_fingerprint(tmp))
        side, side_tmp = sidecar_path(path), sidecar_path(tmp)
        side_tmp.write_text(json.dumps(meta, indent=1))
        os.replace(side_tmp, side)
    os.replace(tmp, path)  # last: a checkpoint on disk always has its sidecar
    return path


# --- load_clip -----------------------------------------------------------------------------------

def download_root_dir(download_root) -> Path:
    root = download_root or os.environ.get("LABUTILS_CLIP_DOWNLOAD_ROOT")
    return Path(root).expanduser() if root else Path("~/.cache/clip").expanduser()


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def fetch_model(name: str, download_root=None) -> Path:
    """The checkpoint file of an OpenAI model name, downloaded into ``download_root`` if missing."""
    if name not in clip.available_models():
        raise ClipUnavailableError(f"unknown CLIP model {name!r}; names: "
                                   f"{', '.join(clip.available_models())}")
    root = download_root_dir(download_root)
    url = clip.clip._MODELS[name]
    target = root / os.path.basename(url)
    if env_switch("LABUTILS_CLIP_OFFLINE") and not target.is_file():
        raise ClipUnavailableError(f"{target} is missing and LABUTILS_CLIP_OFFLINE is set")
    with _socket_timeout(DOWNLOAD_TIMEOUT_S):
        return Path(clip.clip._download(url, str(root)))

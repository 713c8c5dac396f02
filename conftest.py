"""Test-session settings, shared by the unit tests and the notebooks run through nbval.

Set here, before any kernel starts, so the notebooks' kernels inherit them.
"""
import os
import tempfile

os.environ.setdefault("LABUTILS_PROFILE", "ci")
os.environ.setdefault("LABUTILS_OUTPUT_DIR", tempfile.mkdtemp(prefix="labutils-test-run-"))
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TQDM_DISABLE", "1")
# The suite runs offline by design: no attempt to download CLIP ViT-B/32 (lab 05 then uses the
# locally trained stand-in, as on an offline cluster node). Set it to 0 to test the real download.
os.environ.setdefault("LABUTILS_CLIP_OFFLINE", "1")

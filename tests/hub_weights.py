"""Real-weights tests: marked `weights`, skipped unless the files are in the local cache.

    @needs_weights("depth-anything/Depth-Anything-V2-Large-hf", "model.safetensors")
    def test_real_depth(): ...

`make test-weights` runs them (on a machine where `huggingface-cli download` has fetched
the weights once; the README lists what to fetch). Nothing here reaches the network.
"""

from __future__ import annotations

import os

import pytest


def cached_file(repo_id: str, filename: str, revision: str | None = None) -> str | None:
    """The local path of a hub file if the HF cache (or a local folder) holds it."""
    if os.path.isdir(repo_id):
        path = os.path.join(repo_id, filename)
        return path if os.path.isfile(path) else None
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo_id, filename, revision=revision)
    return path if isinstance(path, str) else None


def needs_weights(repo_id: str, filename: str, revision: str | None = None):
    """Mark a test `weights` and skip it when `repo_id/filename` is not cached locally."""
    missing = cached_file(repo_id, filename, revision) is None
    reason = (f"needs {repo_id}/{filename} in the local Hugging Face cache: "
              f"huggingface-cli download {repo_id} {filename}")

    def mark(fn):
        return pytest.mark.weights(pytest.mark.skipif(missing, reason=reason)(fn))

    return mark

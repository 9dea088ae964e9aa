"""Resolve a model name or path to local files, through `huggingface_hub`.

A local directory is used as it is. Anything else is a hub repo id: files come from the `huggingface_hub` cache
(revision, cache_dir, token) and are downloaded only when the hub is reachable. `HF_HUB_OFFLINE=1` or
`local_files_only=True` never touches the network; a repo that is not cached then fails with a message that says so.
File names that would leave the repo (`..`, absolute paths) are refused before any download (`check_filename`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

import huggingface_hub
from huggingface_hub import errors as hf_errors


@dataclass(frozen=True)
class HubOptions:
    """Where and how to look for a repo id (ignored for local directories)."""

    revision: str | None = None
    cache_dir: str | os.PathLike | None = None
    local_files_only: bool = False
    token: str | bool | None = None

    @classmethod
    def pop_from(cls, kwargs: dict) -> "HubOptions":
        """Take the hub keywords out of a `from_pretrained(**kwargs)` dict."""
        return cls(**{k: kwargs.pop(k) for k in ("revision", "cache_dir", "local_files_only", "token") if k in kwargs})


def _offline(opts: HubOptions) -> bool:
    return opts.local_files_only or os.environ.get("HF_HUB_OFFLINE", "0").upper() in ("1", "ON", "YES", "TRUE")


def is_local(name_or_path: str | os.PathLike) -> bool:
    return Path(name_or_path).expanduser().is_dir()


def check_filename(filename, where: str) -> str:
    """`filename` if it is a plain relative path inside a model directory / repo, else ValueError (`where` says whose
    name it is). Names read from checkpoint files (index shard names) pass here before they are downloaded or
    opened: an absolute path, a drive or a `..` part would reach outside the model."""
    ok = isinstance(filename, str) and filename and "\0" not in filename and filename[0] not in "/\\"
    if not ok or PureWindowsPath(filename).drive or ".." in re.split(r"[\\/]", filename):
        raise ValueError(
            f"{where}: {filename!r} is not a relative path inside the model directory (it is empty, absolute, has a "
            "drive or a '..' part); refusing to read or download it. Name files relative to the model directory."
        )
    return filename


def resolve_file(
    name_or_path: str | os.PathLike, filename: str, opts: HubOptions = HubOptions(), *, required: bool = True
) -> Path | None:
    """Local path of `filename` inside a model directory or hub repo; None if absent and not `required`."""
    if is_local(name_or_path):
        path = Path(name_or_path).expanduser() / filename
        if path.is_file():
            return path
        if required:
            raise FileNotFoundError(f"{filename} not found in the model directory {name_or_path}.")
        return None
    repo_id = str(name_or_path)
    if repo_id.count("/") > 1 or repo_id.startswith((".", "/", "~")):
        raise FileNotFoundError(f"{repo_id!r} is neither an existing local directory nor a valid hub repo id.")
    check_filename(filename, f"file requested from the hub repo {repo_id}")
    try:
        return Path(
            huggingface_hub.hf_hub_download(
                repo_id,
                filename,
                revision=opts.revision,
                cache_dir=opts.cache_dir,
                local_files_only=_offline(opts),
                token=opts.token,
            )
        )
    # LocalEntryNotFoundError subclasses EntryNotFoundError: it must be caught first.
    except hf_errors.LocalEntryNotFoundError as e:
        if _offline(opts):
            if not required and _repo_is_cached(repo_id, opts):
                return None
            raise FileNotFoundError(
                f"{repo_id}/{filename} is not in the local Hugging Face cache and the hub is offline "
                "(HF_HUB_OFFLINE=1 or local_files_only=True). Download it once with network access, "
                "or pass a local directory."
            ) from e
        if required:
            raise FileNotFoundError(f"Could not fetch {repo_id}/{filename}: {e}") from e
        return None
    except (hf_errors.EntryNotFoundError, hf_errors.RemoteEntryNotFoundError) as e:
        if required:
            raise FileNotFoundError(f"{filename} does not exist in the hub repo {repo_id}.") from e
        return None
    except hf_errors.RepositoryNotFoundError as e:
        raise FileNotFoundError(f"{repo_id!r} is not a local directory and no hub repo of that name exists.") from e


def _repo_is_cached(repo_id: str, opts: HubOptions) -> bool:
    try:
        huggingface_hub.snapshot_download(
            repo_id, revision=opts.revision, cache_dir=opts.cache_dir, local_files_only=True, allow_patterns=["*.json"]
        )
        return True
    except Exception:
        return False


def first_existing(
    name_or_path: str | os.PathLike, filenames: list[str], opts: HubOptions = HubOptions()
) -> Path | None:
    """The first of `filenames` that exists in the model directory / repo, or None."""
    for name in filenames:
        path = resolve_file(name_or_path, name, opts, required=False)
        if path is not None:
            return path
    return None

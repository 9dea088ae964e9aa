"""Resolve a model name or path to local files, through `huggingface_hub`.

A local directory is used as it is. Anything else is a hub repo id: files come from the `huggingface_hub` cache
(revision, cache_dir, token) and are downloaded only when the hub is reachable. `HF_HUB_OFFLINE=1` or
`local_files_only=True` never touches the network; a repo that is not cached then fails with a message that says so.
File names that would leave the repo (`..`, absolute paths) are refused before any download (`check_filename`).

Unreachable hub: for a file that is not in the cache, huggingface_hub retries a failed connection five times with
backoff (about 22 s for a host that does not even resolve) before giving up. So before downloading a file the cache
lacks, one HEAD request without retries (`get_hf_file_metadata(retry_on_errors=False)`, its timeout the library's own
`HF_HUB_ETAG_TIMEOUT`, 10 s by default) checks that the hub answers; if the request fails without an HTTP answer, the
hub is treated as offline at once and the error (`HubUnavailableError`) says so in one line. Cached files cost no
extra request (huggingface_hub's own check of them already fails fast), and an HTTP answer (404, 401, 5xx) is left
to `hf_hub_download` to report or retry as usual.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

import huggingface_hub
from huggingface_hub import errors as hf_errors
from huggingface_hub.utils import _http as hf_http


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


class HubUnavailableError(FileNotFoundError):
    """A file of a hub repo that is not in the local cache while the hub cannot be used: offline
    (`HF_HUB_OFFLINE=1`, `local_files_only=True`) or not answering. Its message is one line; the CLI prints only it."""


def _offline(opts: HubOptions) -> bool:
    env = os.environ.get("HF_HUB_OFFLINE", "0").upper() in ("1", "ON", "YES", "TRUE")
    return opts.local_files_only or env or huggingface_hub.constants.is_offline_mode()


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
    offline = _offline(opts)
    # None: the hub answered or was not asked; else why it cannot be reached (then only the cache is read)
    unreachable = None if offline or _is_cached(repo_id, filename, opts) else _unreachable(repo_id, filename, opts)
    try:
        return Path(
            huggingface_hub.hf_hub_download(
                repo_id,
                filename,
                revision=opts.revision,
                cache_dir=opts.cache_dir,
                local_files_only=offline or unreachable is not None,
                token=opts.token,
            )
        )
    # LocalEntryNotFoundError subclasses EntryNotFoundError: it must be caught first.
    except hf_errors.LocalEntryNotFoundError as e:
        if offline or unreachable is not None:
            if not required and _repo_is_cached(repo_id, opts):
                return None
            raise HubUnavailableError(_unavailable_message(repo_id, filename, unreachable)) from e
        if required:
            raise FileNotFoundError(f"Could not fetch {repo_id}/{filename}: {e}") from e
        return None
    except (hf_errors.EntryNotFoundError, hf_errors.RemoteEntryNotFoundError) as e:
        if required:
            raise FileNotFoundError(f"{filename} does not exist in the hub repo {repo_id}.") from e
        return None
    except hf_errors.RepositoryNotFoundError as e:
        raise FileNotFoundError(f"{repo_id!r} is not a local directory and no hub repo of that name exists.") from e


def _unavailable_message(repo_id: str, filename: str, unreachable: str | None) -> str:
    """One line: which repo and file, that it is not cached, why the hub was not asked, and what to do."""
    where = f"{repo_id!r} is not a local directory, and {repo_id}/{filename} is not in the local Hugging Face cache"
    if unreachable is None:  # the phrase "and the hub is offline" is what callers and tests match on
        return (
            f"{where} and the hub is offline (HF_HUB_OFFLINE=1 or local_files_only=True). Download it once with "
            "network access (HF_HUB_OFFLINE unset), or pass the path of a local model directory."
        )
    return (
        f"{where}, and the hub cannot be reached ({unreachable}). Pass the path of a local model directory, or "
        "download the repo once with network access; with HF_HUB_OFFLINE=1 only the cache is read, without trying "
        "the network."
    )


def _is_cached(repo_id: str, filename: str, opts: HubOptions) -> bool:
    """`filename` of the repo is in the local cache (a recorded absence does not count: the hub would be asked)."""
    try:
        found = huggingface_hub.try_to_load_from_cache(
            repo_id, filename, cache_dir=opts.cache_dir, revision=opts.revision
        )
    except ValueError:  # an invalid repo id: hf_hub_download reports it
        return True
    return isinstance(found, str)


# The failures huggingface_hub retries with backoff (~22 s in all): no HTTP answer at all (a private name: should a
# release drop it, nothing is caught here and a dead network is as slow as in huggingface_hub itself).
_NO_ANSWER = getattr(hf_http, "_DEFAULT_RETRY_ON_EXCEPTIONS", ())


def _unreachable(repo_id: str, filename: str, opts: HubOptions) -> str | None:
    """Why the hub cannot be reached, or None when it answers: one HEAD request without retries, within
    huggingface_hub's own `HF_HUB_ETAG_TIMEOUT`. An HTTP error (404, 401, 5xx) means the hub answered; what it means
    is left to `hf_hub_download`, as is an invalid repo id."""
    endpoint = huggingface_hub.constants.ENDPOINT
    try:
        url = huggingface_hub.hf_hub_url(repo_id, filename, revision=opts.revision)
        huggingface_hub.get_hf_file_metadata(
            url, token=opts.token, timeout=huggingface_hub.constants.HF_HUB_ETAG_TIMEOUT, retry_on_errors=False
        )
    except _NO_ANSWER as e:
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return f"{endpoint} did not answer: {detail}"
    except Exception:  # an HTTP answer, or a bad argument: hf_hub_download raises its own error for it
        return None
    return None


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

"""Weight resolution: an explicit local path, then the Hugging Face cache, then a download.

Every plugin that loads a checkpoint goes through :func:`resolve_file` or
:func:`resolve_repo`, so caching, ``HF_HUB_OFFLINE`` and the error a user sees
on a miss are the same everywhere. Checkpoints are read with safetensors or
``torch.load(weights_only=True)``: never arbitrary pickle execution.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from r0kit.errors import WeightsError


#: Models that ship inside the r0kit package, by short name: (folder under the package, what it is).
#: They resolve before any local path or hub id, are verified against the sha256 sums in the
#: ``checksums.json`` beside them on first use, and never touch the network.
BUILTIN_MODELS: dict[str, tuple[str, str]] = {
    "r0kit-mini": ("mini/models/pipeline", "the mini world's text-to-image pipeline (diffusers)"),
    "r0kit-mini-clip": ("mini/models/clip", "the mini world's CLIP (open_clip layout)"),
    "r0kit-mini-hps": ("mini/models/hps", "the mini world's preference model (HPS checkpoint)"),
    "r0kit-mini-aesthetic": ("mini/models/aesthetic", "the mini world's aesthetic predictor (CLIP + MLP head)"),
    "r0kit-mini-judge": ("mini/models/judge", "the mini world's judge feature network"),
}
_VERIFIED: set[str] = set()


def check_source(value: object, what: str, key: str = "model") -> None:
    """Refuse a weights source that is not a string or a path (``checkpoint = true``, ``model = 42``):
    :class:`OptionError` naming ``what`` and ``key``, instead of a TypeError deep in the loader."""
    if isinstance(value, (str, os.PathLike)) and str(value).strip():
        return
    from r0kit.errors import OptionError

    raise OptionError(f"{what}: {key} must be a local path, a hub id or a built-in short name (a string), got {value!r}")


def builtin_model(name: str | os.PathLike) -> Path | None:
    """The folder of a built-in model's short name (see :data:`BUILTIN_MODELS`), checksums verified; else ``None``.

    :raises WeightsError: when a file of the folder is missing or does not match its recorded sha256.
    """
    entry = BUILTIN_MODELS.get(str(name))
    if entry is None:
        return None
    folder = Path(__file__).resolve().parent / entry[0]
    if str(name) not in _VERIFIED:
        verify_checksums(folder, what=f"{name} ({entry[1]})")
        _VERIFIED.add(str(name))
    return folder


def verify_checksums(folder: Path, *, what: str) -> None:
    """Check every file ``checksums.json`` (in ``folder`` or its parent) lists under ``folder``.

    :raises WeightsError: naming the file that is missing or differs.
    """
    import hashlib
    import json

    for sums_file in (folder / "checksums.json", folder.parent / "checksums.json"):
        if sums_file.is_file():
            break
    else:
        raise WeightsError(f"{what}: {str(folder)!r} has no checksums.json; reinstall r0kit")
    base = sums_file.parent
    sums = json.loads(sums_file.read_text())
    mine = {k: v for k, v in sums.items() if (base / k).resolve().is_relative_to(folder.resolve())}
    if not mine:
        raise WeightsError(f"{what}: checksums.json lists no file of {str(folder)!r}; reinstall r0kit")
    for rel, expected in sorted(mine.items()):
        path = base / rel
        if not path.is_file():
            raise WeightsError(f"{what}: {str(path)!r} is missing; reinstall r0kit or rebuild with `python -m r0kit.mini build`")
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        if h.hexdigest() != expected:
            raise WeightsError(
                f"{what}: {str(path)!r} does not match its recorded sha256 (the file is damaged or was replaced); "
                "reinstall r0kit or rebuild with `python -m r0kit.mini build`"
            )


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) asks for no network."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    return False


def _how_to_fetch(repo_id: str, filename: str | None, revision: str | None) -> str:
    rev = f" --revision {revision}" if revision else ""
    target = f"{repo_id} {filename}" if filename else repo_id
    return (
        f"fetch it on a machine with network access with `hf download {target}{rev}` "
        "(it lands in the Hugging Face cache, ~/.cache/huggingface/hub, or $HF_HOME), "
        "copy that cache here, or pass the local path explicitly "
        f"({repo_id!r} was read as a hub id because no local folder of that name exists: check the path if you meant one)"
    )


def resolve_file(
    repo_id: str,
    filename: str,
    *,
    path: str | os.PathLike | None = None,
    revision: str | None = None,
    what: str = "weights",
) -> Path:
    """Return a local file for ``repo_id/filename``.

    :param path: an explicit local file (or a folder holding ``filename``);
        used as is, and it must exist.
    :param what: a short description for error messages, e.g. ``"HPS v2.1 checkpoint"``.
    :raises WeightsError: with the missing repository and file and how to fetch them.
    """
    check_source(repo_id, what, "the repository")
    if path is not None:
        check_source(path, what, "checkpoint")
        p = builtin_model(path) or Path(path).expanduser()
        if p.is_dir():
            p = p / filename
        if not p.is_file():
            raise WeightsError(f"{what}: the local path {str(p)!r} does not exist or is not a file")
        return p
    local = builtin_model(repo_id) or Path(repo_id).expanduser()
    if local.is_dir():
        p = local / filename
        if not p.is_file():
            raise WeightsError(f"{what}: the folder {str(local)!r} has no file {filename!r}")
        return p
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, filename, revision=revision)
    if isinstance(cached, str) and Path(cached).is_file():
        return Path(cached)
    if is_offline():
        raise WeightsError(
            f"{what}: {repo_id}/{filename} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; "
            + _how_to_fetch(repo_id, filename, revision)
        )
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision))
    except Exception as exc:  # network errors, 404s, auth
        raise WeightsError(
            f"{what}: could not download {repo_id}/{filename} ({type(exc).__name__}: {exc}); "
            + _how_to_fetch(repo_id, filename, revision)
        ) from None


def resolve_repo(
    repo_id: str,
    *,
    revision: str | None = None,
    allow_patterns: list[str] | None = None,
    what: str = "model",
) -> Path:
    """Return a local folder for a whole repository (a diffusers or transformers model).

    ``repo_id`` may be a built-in model's short name (:data:`BUILTIN_MODELS`) or a local
    folder, used as is. Pass ``allow_patterns`` for the files
    actually read (a whole repository can hold many checkpoints); a diffusers pipeline
    goes through :func:`resolve_pipeline`, which selects them itself.
    """
    local = _check_repo_id(repo_id, what)
    if local is not None:
        return local
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=allow_patterns, local_files_only=True))
    except Exception:
        pass
    if is_offline():
        raise WeightsError(
            f"{what}: {repo_id} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; "
            + _how_to_fetch(repo_id, None, revision)
        )
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=allow_patterns))
    except Exception as exc:
        raise WeightsError(
            f"{what}: could not download {repo_id} ({type(exc).__name__}: {exc}); "
            + _how_to_fetch(repo_id, None, revision)
        ) from None


def _check_repo_id(repo_id: str, what: str) -> Path | None:
    """The local folder ``repo_id`` names (a built-in short name or a path), ``None`` for a hub id,
    or :class:`WeightsError` for a missing folder (:class:`OptionError` for one that is not a string)."""
    check_source(repo_id, what)
    builtin = builtin_model(repo_id)
    if builtin is not None:
        return builtin
    local = Path(repo_id).expanduser()
    if local.is_dir():
        return local
    if local.is_absolute() or repo_id.startswith((".", "~")) or repo_id.count("/") > 1:
        raise WeightsError(f"{what}: the local folder {repo_id!r} does not exist")
    return None


def resolve_pipeline(
    repo_id: str,
    *,
    components: Sequence[str],
    variant: str | None = None,
    revision: str | None = None,
    check_index: Callable[[dict[str, Any]], None] | None = None,
    what: str = "diffusion model",
) -> Path:
    """Return a local folder of a diffusers pipeline holding only what r0kit loads from it.

    That is ``model_index.json``, the scheduler, and for each of ``components``
    (``model_index.json`` keys: ``"unet"``, ``"vae"``, ``"text_encoder"``, ``"tokenizer"``, ...)
    its config and weights: safetensors when the repository has them, else ``.bin``,
    in ``variant`` (``"fp16"``) where it exists. The repository's other components
    (safety checker, feature extractor, ...), its single-file checkpoints at the root and
    its other variants are not fetched (tens of GB for SD 1.5). The file selection is
    diffusers' own (``DiffusionPipeline.download``, with every unwanted component
    passed as ``None``).

    Like :func:`resolve_repo`: a local folder is used as is; the Hugging Face cache is
    tried first without network; ``HF_HUB_OFFLINE`` turns a miss into an error that says
    how to fetch the files.

    :param check_index: called with the parsed ``model_index.json`` before any weight is
        fetched; it raises to refuse the pipeline (a transformer pipeline r0kit cannot sample).

    :raises WeightsError: the folder does not exist, the pipeline is not cached while
        offline, or the download fails.
    """
    local = _check_repo_id(repo_id, what)
    if local is not None:
        return local
    index_path = resolve_file(repo_id, "model_index.json", revision=revision, what=what)
    try:
        index = json.loads(Path(index_path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise WeightsError(f"{what}: {repo_id}/model_index.json cannot be read ({exc}); fetch it again") from None
    if check_index is not None:
        check_index(index)
    listed = [k for k, v in index.items() if not k.startswith("_") and isinstance(v, (list, tuple)) and len(v) == 2]
    wanted = set(components) | {"scheduler"}
    skip = {k: None for k in listed if k not in wanted}
    try:
        from diffusers import DiffusionPipeline
    except ImportError as exc:
        raise WeightsError(f"{what}: fetching a diffusers pipeline needs diffusers ({exc}); pip install 'r0kit[diffusers]'") from None
    kw: dict[str, Any] = dict(revision=revision, variant=variant, **skip)

    def complete(folder: Path) -> bool:
        return all((folder / c).is_dir() for c in wanted if c in listed)

    try:
        folder = Path(DiffusionPipeline.download(repo_id, local_files_only=True, **kw))
        if complete(folder):
            return folder
    except Exception:  # not (fully) in the cache
        pass
    if is_offline():
        raise WeightsError(
            f"{what}: {repo_id} ({', '.join(sorted(wanted))}) is not in the Hugging Face cache and HF_HUB_OFFLINE is set; "
            + _how_to_fetch(repo_id, None, revision)
        )
    try:
        return Path(DiffusionPipeline.download(repo_id, **kw))
    except Exception as exc:
        raise WeightsError(
            f"{what}: could not download {repo_id} ({type(exc).__name__}: {exc}); " + _how_to_fetch(repo_id, None, revision)
        ) from None


def load_state_dict(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely: safetensors, or ``torch.load(weights_only=True)``.

    :raises WeightsError: naming the file when it is missing, truncated or not a checkpoint.
    """
    p = Path(path)
    if not p.is_file():
        raise WeightsError(f"checkpoint {str(p)!r} does not exist")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(p), device=str(map_location))
        obj = torch.load(str(p), map_location=map_location, weights_only=True)
    except Exception as exc:
        raise WeightsError(
            f"checkpoint {str(p)!r} is corrupt or not a tensor checkpoint ({type(exc).__name__}: {exc}); "
            "delete it and fetch it again"
        ) from None
    if not isinstance(obj, dict):
        raise WeightsError(f"checkpoint {str(p)!r} holds a {type(obj).__name__}, not a state dict")
    return obj

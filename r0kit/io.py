"""Atomic file writes (a temporary file beside the target, then a rename) and staged output folders."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + target.suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; give the file the permissions a plain open() would.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The :data:`~r0kit.checks.MANIFEST` of an output folder, or ``{}`` when there is none (or it is unreadable)."""
    from r0kit.checks import MANIFEST

    try:
        data = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def files_under(root: str | os.PathLike, name: str = "") -> list[str]:
    """Every file (or link) at or below ``root/name``, as sorted POSIX paths relative to ``root``: what a
    manifest lists so that a later ``--overwrite`` replaces exactly those files."""
    root = Path(root)
    top = root / name if name else root
    found = [top] if top.is_file() or top.is_symlink() else sorted(top.rglob("*")) if top.is_dir() else []
    return [f.relative_to(root).as_posix() for f in found if not f.is_dir() or f.is_symlink()]


class StagedDir:
    """An output folder whose files are written aside and moved into place when the run has results.

    ``open()`` creates a hidden staging folder inside ``target`` (creating
    ``target`` if needed): it proves, before any work, that the folder can be
    written. The run writes into :attr:`path`. ``commit()`` moves every entry of
    the staging folder into ``target``, replacing entries of the same name, and
    removes the files an earlier run listed in its manifest that this run did
    not write again; nothing else in ``target`` is touched. ``discard()``
    removes the staging folder, and ``target`` (with the parents ``open()``
    created) when it made them, so a run that failed before it had results
    leaves the file system as it found it.
    """

    def __init__(self, target: str | os.PathLike) -> None:
        self.target = Path(target)
        self.path = self.target / f".r0kit-partial-{os.getpid()}"
        self._created: list[Path] = []

    def open(self) -> Path:
        missing = []
        p = self.target
        while not p.exists() and p != p.parent:
            missing.append(p)
            p = p.parent
        self.target.mkdir(parents=True, exist_ok=True)
        self._created = missing  # innermost first
        for stale in self.target.glob(".r0kit-partial-*"):  # left by a run that was killed outright
            if stale == self.path or not _pid_alive(stale.name.rsplit("-", 1)[-1]):
                shutil.rmtree(stale, ignore_errors=True)
        self.path.mkdir()
        return self.path

    def commit(self) -> list[Path]:
        """Move the staged entries into ``target``; returns their final paths.

        An entry of ``target`` is replaced only when an earlier run listed it (or a folder
        above it) in its manifest; a folder no run listed is merged file by file. A manifest
        that lists files inside folders (``evaluate``'s) so replaces exactly those files, and
        the user's own files beside them stay. When a
        staged file would replace a file no run wrote, nothing is replaced: the staged
        files are kept in a visible ``r0kit-unsaved-<pid>`` folder inside ``target``.

        :raises ConfigError: naming the files that would have been replaced and where the
            run's files are.
        """
        from r0kit.checks import MANIFEST
        from r0kit.errors import ConfigError

        listed = read_manifest(self.target).get("files", [])
        old = [str(n).rstrip("/") for n in listed] if isinstance(listed, list) else []

        def owned(rel: str) -> bool:
            return rel == MANIFEST or any(rel == o or rel.startswith(o + "/") for o in old)

        def entries(rel_dir: str) -> list[tuple[str, Path]]:
            return [((f"{rel_dir}/{e.name}" if rel_dir else e.name), e) for e in sorted((self.path / rel_dir).iterdir())]

        conflicts: list[str] = []
        staged = {p.relative_to(self.path).as_posix() for p in self.path.rglob("*")}

        def scan(rel_dir: str) -> None:
            for rel, e in entries(rel_dir):
                dst = self.target / rel
                if not (dst.exists() or dst.is_symlink()) or owned(rel):
                    continue
                if e.is_dir() and dst.is_dir() and not dst.is_symlink():
                    scan(rel)
                else:
                    conflicts.append(rel)

        scan("")
        if conflicts:
            keep = self.target / f"r0kit-unsaved-{os.getpid()}"
            os.replace(self.path, keep)
            self._created = []
            shown = ", ".join(repr(c) for c in conflicts[:5]) + (f" and {len(conflicts) - 5} more" if len(conflicts) > 5 else "")
            raise ConfigError(
                f"{str(self.target)!r}: this run's files would replace {shown}, which no r0kit run wrote there, "
                f"so nothing was replaced; this run's files are in {str(keep)!r}. Move them, or use another folder"
            )
        moved = [self.target / e.name for e in sorted(self.path.iterdir())]

        def place(rel_dir: str) -> None:
            for rel, e in entries(rel_dir):
                dst = self.target / rel
                if e.is_dir() and dst.is_dir() and not dst.is_symlink() and not owned(rel):
                    place(rel)  # a folder no run wrote: merge, keeping the files in it
                    continue
                if dst.is_dir() and not dst.is_symlink():
                    shutil.rmtree(dst)
                os.replace(e, dst)

        place("")
        for name in old:
            stale = self.target / name
            if name in staged or name == MANIFEST or ".." in Path(name).parts or Path(name).is_absolute():
                continue  # written again, or not an entry of this folder
            if "/" in name:
                if stale.is_file() or stale.is_symlink():
                    stale.unlink(missing_ok=True)  # a file an earlier run listed inside a folder it shares
                    for parent in stale.parents:  # and the folders that emptied, up to the target
                        if parent == self.target or not parent.is_relative_to(self.target):
                            break
                        try:
                            parent.rmdir()
                        except OSError:
                            break
                continue
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
        shutil.rmtree(self.path, ignore_errors=True)
        self._created = []
        return moved

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        for p in self._created:  # innermost first; only folders this run made, and only if still empty
            try:
                p.rmdir()
            except OSError:
                break
        self._created = []


def unlisted_outputs(target: str | os.PathLike, names: tuple[str, ...]) -> list[str]:
    """The entries among ``names`` that ``target`` holds although no r0kit run's manifest lists them.

    A folder with a manifest was written by a run, which listed what is its own; a folder
    without one holds the user's files, and a run that replaces must not take them.
    """
    from r0kit.checks import MANIFEST

    target = Path(target)
    if isinstance(read_manifest(target).get("files"), list):
        return []
    return [n for n in names if n != MANIFEST and ((target / n).exists() or (target / n).is_symlink())]


def check_replaceable(target: str | os.PathLike, names: tuple[str, ...], what: str) -> None:
    """Refuse (:class:`~r0kit.errors.ConfigError`, naming ``what``) to replace a folder whose run outputs
    ``names`` no run lists: they would be deleted although no r0kit run wrote them."""
    from r0kit.errors import ConfigError

    clash = unlisted_outputs(target, names)
    if clash:
        raise ConfigError(
            f"{what} {str(target)!r} holds {', '.join(clash)}, which no r0kit run lists (it has no r0kit-run.json), "
            "so --overwrite will not replace them; nothing was changed. Move them, or choose another output folder"
        )


class ClaimedDir:
    """An output folder that a long run writes into as it goes (``r0kit train``).

    ``start()`` records every path under ``target`` (creating it if needed).
    With ``replace``, the top-level entries an earlier run listed in its
    manifest are moved into a hidden folder inside ``target``; a folder
    without a manifest holding any of ``replace_names`` (the run's outputs)
    is refused (:func:`check_replaceable`), since nothing says a run wrote
    them; ``backup`` names files the
    run rewrites in place (a resumed run's metrics), which are copied there.
    ``keep()`` is called once the run has results of its own: the earlier
    run's files are deleted. ``rollback()`` is called when it failed before
    that: everything the run created is removed and the earlier files come
    back, so the folder is as the run found it.
    """

    def __init__(self, target: str | os.PathLike, *, replace: bool = False, replace_names: tuple[str, ...] = (),
                 backup: tuple[str, ...] = ()) -> None:
        self.target = Path(target)
        self.aside = self.target / f".r0kit-replaced-{os.getpid()}"
        self.replace, self.replace_names, self.backup = replace, replace_names, backup
        self._before: set[Path] = set()
        self._created: list[Path] = []
        self._moved: list[str] = []
        self._copied: list[str] = []
        self._old_written: set[str] | None = None

    def start(self) -> None:
        missing, p = [], self.target
        while not p.exists() and p != p.parent:
            missing.append(p)
            p = p.parent
        self.target.mkdir(parents=True, exist_ok=True)
        self._created = missing
        old = read_manifest(self.target)
        if isinstance(old.get("written"), list):
            self._old_written = {str(n) for n in old["written"]}
        if self.replace:
            check_replaceable(self.target, self.replace_names, "the output folder")
            listed = old.get("files")
            self._check_own_files_inside([str(n) for n in listed] if isinstance(listed, list) else [])
            for name in [str(n) for n in listed] if isinstance(listed, list) else []:
                src = self.target / name
                if src.parent == self.target and (src.exists() or src.is_symlink()):
                    self.aside.mkdir(exist_ok=True)
                    os.replace(src, self.aside / name)
                    self._moved.append(name)
        for rel in self.backup:
            src = self.target / rel
            if src.is_file():
                dst = self.aside / "backup" / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
                self._copied.append(rel)
        self._before = {p for p in self.target.rglob("*") if not _under(p, self.aside)}

    def _check_own_files_inside(self, listed: list[str]) -> None:
        """Refuse, before anything moves, to replace a ``listed`` folder that holds files the earlier run
        did not write (the user's photo in ``samples/``): the manifest's ``written`` names the files of a
        run that ended in-process; a manifest without it (a run killed outright) cannot tell them apart."""
        from r0kit.errors import ConfigError

        if self._old_written is None:
            return
        folders = [n for n in listed if (self.target / n).parent == self.target and (self.target / n).is_dir()
                   and not (self.target / n).is_symlink()]
        foreign = [rel for n in folders for rel in files_under(self.target, n) if rel not in self._old_written]
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise ConfigError(
                f"the output folder {str(self.target)!r} holds {shown}, which the earlier run did not write, inside "
                "a folder --overwrite replaces; nothing was changed. Move them out, or choose another output folder"
            )

    def written(self, names: tuple[str, ...]) -> list[str]:
        """Every file now under ``names`` (top-level entries of ``target``) that a run wrote: this one's,
        and those the earlier run's manifest listed as written (a resumed run's); files that were there
        before this run and that no manifest lists are not. For the manifest's ``written`` list."""
        def earlier_and_unlisted(rel: str) -> bool:
            return self._old_written is not None and self.target / rel in self._before and rel not in self._old_written

        return [rel for name in names for rel in files_under(self.target, name) if not earlier_and_unlisted(rel)]

    def keep(self) -> None:
        shutil.rmtree(self.aside, ignore_errors=True)
        self._moved, self._copied, self._created = [], [], []

    def rollback(self) -> None:
        for p in sorted(self.target.rglob("*"), key=lambda q: len(q.parts), reverse=True):
            if p in self._before or _under(p, self.aside) or p == self.aside:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        for rel in self._copied:
            os.replace(self.aside / "backup" / rel, self.target / rel)
        for name in self._moved:
            os.replace(self.aside / name, self.target / name)
        shutil.rmtree(self.aside, ignore_errors=True)
        for p in self._created:  # innermost first; only folders this run made
            try:
                p.rmdir()
            except OSError:
                break
        self._moved, self._copied, self._created = [], [], []


def _pid_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _under(p: Path, folder: Path) -> bool:
    return p == folder or folder in p.parents

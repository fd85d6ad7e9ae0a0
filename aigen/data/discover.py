"""Find the two class folders under a data root and the candidate files inside them.

Whether a candidate is an image is decided later by Pillow (aigen.data.loading), never by its name:
every regular file under a class folder is a candidate, whatever its extension.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from aigen.errors import UserError

LABEL_AI = 1
LABEL_REAL = 0
LABEL_NAMES = {LABEL_AI: "AI-generated", LABEL_REAL: "real"}

# Folder names are compared after lower-casing and dropping everything that is not a letter, so
# "AiArtData", "1_fake", "AI-generated" and "REAL" become "aiartdata", "fake", "aigenerated", "real".
AI_FOLDER_NAMES = frozenset({
    "ai", "aiart", "aiartdata", "aigenerated", "aigen", "aiimages", "aiphotos",
    "fake", "fakes", "fakeimages", "generated", "synthetic", "synth", "artificial",
})
REAL_FOLDER_NAMES = frozenset({
    "real", "reals", "realart", "realartdata", "realimages", "realphotos", "authentic", "genuine",
    "natural", "photo", "photos", "photographs", "human", "humanart",
})
# Words accepted for a label in an explicit mapping (`--classes ai=FOLDER real=FOLDER`).
_LABEL_WORDS = {
    "1": LABEL_AI, "ai": LABEL_AI, "fake": LABEL_AI, "generated": LABEL_AI, "synthetic": LABEL_AI,
    "0": LABEL_REAL, "real": LABEL_REAL,
}
# Folders that hold no data: version control, macOS archive debris, notebook checkpoints.
# Hidden *files* are candidates (the real data has dot-prefixed image names); hidden folders are not.
_IGNORED_DIR_NAMES = frozenset({"__MACOSX", "__pycache__"})


@dataclass(frozen=True)
class Skipped:
    """A file that is not used, with a one-line reason ("category: detail")."""

    path: Path
    reason: str

    @property
    def category(self) -> str:
        """The reason without its detail, for counting skips per kind."""
        return self.reason.split(":", 1)[0]


@dataclass(frozen=True)
class Candidate:
    """A regular file under a class folder; `rel_path` is POSIX and relative to the data root."""

    path: Path
    rel_path: str
    label: int


@dataclass
class Discovery:
    root: Path
    folders: dict[str, int]  # class folder (POSIX, relative to root) -> label
    files: list[Candidate]  # sorted by rel_path
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def class_names(self) -> dict[int, str]:
        """Label -> folder name(s) that hold it, e.g. {1: "AiArtData", 0: "RealArt"}."""
        return {label: ", ".join(f for f, lab in sorted(self.folders.items()) if lab == label)
                for label in (LABEL_AI, LABEL_REAL)}


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z]", "", name.lower())


def label_for_folder(name: str) -> int | None:
    """LABEL_AI / LABEL_REAL for a recognised class-folder name (case-insensitive), else None."""
    key = _normalise(name)
    if key in AI_FOLDER_NAMES:
        return LABEL_AI
    if key in REAL_FOLDER_NAMES:
        return LABEL_REAL
    return None


def parse_label(text: str | int) -> int:
    """"ai"/"fake"/"generated"/"synthetic"/1 -> LABEL_AI; "real"/0 -> LABEL_REAL."""
    key = str(text).strip().lower()
    if key not in _LABEL_WORDS:
        raise UserError(f"unknown class label {text!r}: use 'ai' (AI-generated) or 'real'")
    return _LABEL_WORDS[key]


def parse_class_args(items: list[str]) -> dict[str, int]:
    """Parse `["ai=FOLDER", "real=FOLDER", ...]` (the --classes option) into {folder: label}."""
    mapping: dict[str, int] = {}
    for item in items:
        label_text, sep, folder = item.partition("=")
        if not sep or not folder.strip():
            raise UserError(f"--classes expects LABEL=FOLDER (e.g. ai=AiArtData real=RealArt), got {item!r}")
        folder = folder.strip()
        if folder in mapping:
            raise UserError(f"--classes names folder {folder!r} twice")
        mapping[folder] = parse_label(label_text)
    return mapping


def _is_ignored_dir(name: str) -> bool:
    return name.startswith(".") or name in _IGNORED_DIR_NAMES


def check_root(root: str | os.PathLike) -> Path:
    """The root as a Path, or a UserError when it is missing or not a folder."""
    root = Path(root).expanduser()
    if not root.exists():
        raise UserError(f"data folder not found: {root}")
    if not root.is_dir():
        raise UserError(f"the data root is a file, not a folder: {root}")
    return root


def _subfolders(root: Path) -> list[str]:
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        raise UserError(f"cannot list the data folder {root}: {exc.strerror or exc}") from None
    return [e.name for e in entries if e.is_dir() and not _is_ignored_dir(e.name)]


def _describe(root: Path, names: list[str]) -> str:
    if not names:
        n_files = sum(1 for e in os.scandir(root) if e.is_file())
        return f"no subfolders ({n_files} file(s) directly in the root)"
    parts = []
    for name in names:
        label = label_for_folder(name)
        parts.append(f"{name}/ ({LABEL_NAMES[label] if label is not None else 'not recognised'})")
    return ", ".join(parts)


_HINT = ("expected one folder of AI-generated images and one of real images, e.g. AiArtData/ and "
         "RealArt/ or fake/ and real/; name them explicitly with --classes ai=FOLDER real=FOLDER")


def find_class_folders(root: str | os.PathLike, class_map: Mapping[str, int | str] | None = None,
                       both: bool = True) -> dict[str, int]:
    """{class folder relative to root (POSIX): label}, recognised by name or given by `class_map`.

    `class_map` maps folder paths (relative to root, may be nested; or absolute inside root) to a
    label (1/0 or "ai"/"real"). Without it, each immediate subfolder must be recognised by name, with
    exactly one folder per class; anything else is a UserError that lists what was found.
    With both=False one class alone is accepted (an evaluation set may hold only AI images).
    """
    root = check_root(root)
    if class_map:
        return _explicit_folders(root, class_map, both)
    names = _subfolders(root)
    found = {name: label_for_folder(name) for name in names}
    unknown = [n for n, lab in found.items() if lab is None]
    per_label = {lab: [n for n, l2 in found.items() if l2 == lab] for lab in (LABEL_AI, LABEL_REAL)}
    what = f"found in {root}: {_describe(root, names)}"
    if unknown and any(per_label.values()):
        raise UserError(f"ambiguous data folder: {len(unknown)} subfolder(s) not recognised as a class "
                        f"({', '.join(unknown)}); {what}; {_HINT}")
    if not per_label[LABEL_AI] and not per_label[LABEL_REAL]:
        raise UserError(f"no class folders recognised; {what}; {_HINT}")
    for label, folders in per_label.items():
        if len(folders) > 1:
            raise UserError(f"ambiguous data folder: several folders look {LABEL_NAMES[label]} "
                            f"({', '.join(folders)}); {what}; {_HINT}")
    for label, folders in per_label.items():
        if not folders and both:
            raise UserError(f"only one class found (no {LABEL_NAMES[label]} folder); {what}; {_HINT}")
    return {folders[0]: label for label, folders in per_label.items() if folders}


def _explicit_folders(root: Path, class_map: Mapping[str, int | str], both: bool = True
                      ) -> dict[str, int]:
    folders: dict[str, int] = {}
    for folder, label in class_map.items():
        path = Path(folder).expanduser()
        if path.is_absolute():
            try:
                path = path.relative_to(root)
            except ValueError:
                raise UserError(f"class folder {folder} is not inside the data root {root}") from None
        if ".." in path.parts:
            raise UserError(f"class folder {folder!r} must be inside the data root {root}")
        full = root / path
        if not full.is_dir():
            raise UserError(f"class folder not found: {full} (found in {root}: "
                            f"{_describe(root, _subfolders(root))})")
        known = isinstance(label, int) and label in LABEL_NAMES
        folders[path.as_posix()] = label if known else parse_label(label)
    for label in (LABEL_AI, LABEL_REAL):
        if label not in folders.values() and both:
            raise UserError(f"the class mapping has no {LABEL_NAMES[label]} folder; "
                            "give one folder per class, e.g. --classes ai=FOLDER real=FOLDER")
    names = sorted(folders)
    for a in names:
        for b in names:
            if a != b and (a == "." or b.startswith(a + "/")):
                raise UserError(f"class folders overlap: {b} is inside {a}")
    return folders


def _walk_files(folder: Path) -> tuple[list[Path], list[Skipped]]:
    """Every file below `folder`, following symbolic links but never into the same folder twice."""
    files: list[Path] = []
    skipped: list[Skipped] = []
    seen_dirs: set[tuple[int, int]] = set()

    def unreadable_folder(exc: OSError) -> None:
        skipped.append(Skipped(Path(exc.filename or folder), f"unreadable: {exc.strerror or exc} (a folder)"))

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable_folder, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError as exc:
            unreadable_folder(exc)
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen_dirs:  # a link back up the tree, or a second link to it
            dirnames[:] = []
            continue
        seen_dirs.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not _is_ignored_dir(d))
        for name in filenames:
            path = Path(dirpath) / name
            try:
                mode = os.stat(path).st_mode
            except OSError as exc:
                reason = "broken symbolic link" if path.is_symlink() else f"unreadable: {exc.strerror or exc}"
                skipped.append(Skipped(path, reason))
                continue
            if not stat.S_ISREG(mode):  # FIFOs, sockets, devices: reading could block or never end
                skipped.append(Skipped(path, "not a regular file"))
                continue
            files.append(path)
    return files, skipped


def discover(root: str | os.PathLike, class_map: Mapping[str, int | str] | None = None,
             both: bool = True) -> Discovery:
    """Class folders and every regular file below them (recursively), sorted by relative path.
    both=False accepts a root with one class only (see find_class_folders)."""
    root = check_root(root)
    folders = find_class_folders(root, class_map, both)
    files: list[Candidate] = []
    skipped: list[Skipped] = []
    for folder, label in folders.items():
        found, bad = _walk_files(root / folder)
        skipped.extend(bad)
        files.extend(Candidate(p, p.relative_to(root).as_posix(), label) for p in found)
    files.sort(key=lambda c: c.rel_path)
    skipped.sort(key=lambda s: str(s.path))
    return Discovery(root=root, folders=folders, files=files, skipped=skipped)


def source_of(rel_path: str, folders: Mapping[str, int]) -> str:
    """The source of an image: the folder right below its class folder (e.g. "stable_diffusion" for
    ai/stable_diffusion/x.jpg), or the class folder's own name for a file directly inside it.

    `folders` is {class folder relative to root: label}, as Discovery.folders.
    """
    for folder in sorted(folders, key=len, reverse=True):
        prefix = "" if folder == "." else folder + "/"
        if rel_path.startswith(prefix):
            parts = rel_path[len(prefix):].split("/")
            if len(parts) > 1:
                return parts[0]
            return Path(folder).name if folder != "." else "."
    return ""

"""`aigen fetch-data`: download the Kaggle dataset when the kaggle package and credentials exist.

Otherwise it prints the manual steps and exits with an error; nothing else in aigen needs it.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

from aigen.errors import UserError

DATASET = "cashbowman/ai-generated-images-vs-real-imagesm"
DATASET_URL = f"https://www.kaggle.com/datasets/{DATASET}"
DEFAULT_DEST = Path("data") / "aiart"


def manual_steps(dest: Path) -> str:
    return f"""\
To get the dataset by hand:
  1. Sign in at kaggle.com and download {DATASET_URL} (the "Download" button gives archive.zip).
  2. Unzip it so that these folders exist:
       {dest}/AiArtData/AiArtData/   (AI-generated images)
       {dest}/RealArt/RealArt/       (real images)
To let `aigen fetch-data` download it:
  1. pip install kaggle
  2. On kaggle.com: Settings -> API -> "Create New Token"; save the file as ~/.kaggle/kaggle.json
     (chmod 600), or set KAGGLE_USERNAME and KAGGLE_KEY in the environment.
  3. Run `aigen fetch-data` again."""


def credentials_found() -> bool:
    """KAGGLE_USERNAME + KAGGLE_KEY, or a kaggle.json where the kaggle client looks for one."""
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return True
    folders = [Path(os.environ["KAGGLE_CONFIG_DIR"])] if os.environ.get("KAGGLE_CONFIG_DIR") else []
    folders += [Path.home() / ".kaggle", Path.home() / ".config" / "kaggle"]
    return any((folder / "kaggle.json").is_file() for folder in folders)


def missing_requirements() -> list[str]:
    problems = []
    if importlib.util.find_spec("kaggle") is None:
        problems.append("the kaggle package is not installed")
    if not credentials_found():
        problems.append("no Kaggle credentials (~/.kaggle/kaggle.json or KAGGLE_USERNAME/KAGGLE_KEY)")
    return problems


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST,
                        help=f"folder to create (default: {DEFAULT_DEST}); it must not exist or be empty")


def run(args: argparse.Namespace) -> int:
    dest: Path = args.dest
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UserError(f"{dest} already exists and is not empty; choose another --dest or remove it")
    problems = missing_requirements()
    if problems:
        print(manual_steps(dest), file=sys.stderr)
        raise UserError("cannot download the dataset: " + "; ".join(problems))
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.download-", dir=dest.parent))
    try:
        _download(tmp)
        from aigen.data.discover import discover

        found = discover(tmp)  # a UserError if the archive does not hold the two class folders
        if dest.exists():
            dest.rmdir()
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    print(f"downloaded {len(found.files)} files into {dest} "
          f"({', '.join(f'{f}/' for f in sorted(found.folders))})", file=sys.stderr)
    return 0


def _download(folder: Path) -> None:
    try:
        # Importing kaggle authenticates at once, and may exit the process on failure.
        from kaggle.api.kaggle_api_extended import KaggleApi

        api = KaggleApi()
        api.authenticate()
        print(f"downloading {DATASET} ...", file=sys.stderr)
        api.dataset_download_files(DATASET, path=str(folder), unzip=True, quiet=False)
    except (Exception, SystemExit) as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise UserError(f"the Kaggle download failed: {detail}") from None

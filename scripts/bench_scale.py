"""How `aigen study` scales with the number of images: wall time per stage and peak memory.

For each N: a dataset of N images (`aigen synth --n N`, or the first N images of --data, taken
in equal numbers per class by symlinks), then `aigen study` twice in a fresh cache folder: cold
(empty cache) and warm (same cache: hash index, packed store and prefix activations reused).
Each run is a child process; its peak RSS is the kernel's (wait4 ru_maxrss), and a sampler reads
its anonymous memory (RssAnon, /proc) every 0.2 s, which leaves out the page cache of files it
reads; the study shows its progress bars, and the longest stretch without output on its stderr is
recorded. Also measured in this process: reopening the warm dataset (load_dataset on the warm cache),
and prefix-activation throughput from the store against a plain torchvision eager loop over the
same files.

    python scripts/bench_scale.py --n 1000 4000 --work /tmp/bench-scale [--phases cold] \
        [-- STUDY OPTIONS]

Study options after `--` replace the defaults (--backbones efficientnet_lite0 --seeds 0). Prints
a Markdown table and adds its figures to bench.json under --work.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_STUDY = ["--backbones", "efficientnet_lite0", "--seeds", "0"]


def _rss_anon_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_child(argv: list[str], env: dict[str, str]) -> dict:
    """Run argv; -> wall seconds, peak RSS (GiB, ru_maxrss), peak RssAnon (GiB, sampled), rc, and
    the longest stretch without any output on stderr (the progress bars and messages a user
    watches) with the last output before it."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak_anon = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak_anon[0] = max(peak_anon[0], _rss_anon_kib(proc.pid))
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    err = b""
    last, silence, before = time.perf_counter(), 0.0, ""
    while chunk := os.read(proc.stderr.fileno(), 65536):
        now = time.perf_counter()
        if now - last > silence:
            tail = err[-200:].decode(errors="replace").replace("\r", "\n").splitlines()
            silence, before = now - last, (tail[-1] if tail else "(start)")
        last = now
        err = (err + chunk)[-20000:]
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    sampler.join()
    if proc.returncode:
        sys.stderr.write(err.decode(errors="replace")[-2000:])
    return {"rc": proc.returncode, "wall_s": round(time.perf_counter() - start, 1),
            "peak_rss_gib": round(usage.ru_maxrss / 2**20, 3),
            "peak_rss_anon_gib": round(peak_anon[0] / 2**20, 3),
            "longest_silence_s": round(silence, 1), "silent_after": before.strip()[:160]}


def make_data(n: int, work: Path, source: Path | None, env: dict[str, str]) -> Path:
    root = work / f"data-{n}"
    if root.exists():
        return root
    if source is None:
        subprocess.run([sys.executable, "-m", "aigen.cli", "synth", str(root), "--n", str(n),
                        "--quiet"], env=env, check=True)
        return root
    from aigen.data.discover import discover

    found = discover(source)
    per_class: dict[int, list] = {}
    for c in found.files:
        per_class.setdefault(c.label, []).append(c)
    for label, files in per_class.items():
        folder = root / found.class_names[label]
        folder.mkdir(parents=True)
        for c in files[: n // 2]:
            (folder / Path(c.rel_path).name).symlink_to(Path(c.path).resolve())
    return root


def throughput(data: Path, n: int, env_cache: str) -> dict:
    """Images/s of prefix activations: from the store (aigen) vs a plain torchvision loop."""
    import torch
    import torchvision.transforms as T
    from PIL import Image

    from aigen.data.dataset import dataset_inputs, load_dataset
    from aigen.data.preprocess import BACKBONE
    from aigen.data.stream import StoreImages, batches
    from aigen.models.backbones import load_backbone

    os.environ["AIGEN_CACHE_DIR"] = env_cache
    dataset = load_dataset(data, progress=False)
    backbone = load_backbone("efficientnet_lite0")
    rows = list(range(min(n, len(dataset.images))))
    t0 = time.perf_counter()
    for x in batches(StoreImages(dataset_inputs(dataset, BACKBONE), BACKBONE, rows), 64):
        backbone.prefix_activations(x, "cpu")
    ours = len(rows) / (time.perf_counter() - t0)
    tf = T.Compose([T.Resize((224, 224)), T.ToTensor(),
                    T.Normalize(BACKBONE.mean, BACKBONE.std)])
    t0 = time.perf_counter()
    paths = [dataset.images[i].path for i in rows]
    with torch.no_grad():
        for s in range(0, len(paths), 64):
            x = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths[s:s + 64]])
            backbone.prefix(x.contiguous(memory_format=torch.channels_last))
    plain = len(rows) / (time.perf_counter() - t0)
    return {"images": len(rows), "aigen_store_img_s": round(ours, 1),
            "torchvision_eager_img_s": round(plain, 1)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = None
    if "--" in argv:
        k = argv.index("--")
        argv, extra = argv[:k], argv[k + 1:]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 4000, 16000])
    parser.add_argument("--data", type=Path, default=None,
                        help="take the images from this folder instead of `aigen synth`")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder for everything")
    parser.add_argument("--throughput", type=int, default=512, metavar="N",
                        help="images for the throughput comparison (0 = skip)")
    parser.add_argument("--phases", nargs="+", choices=("cold", "warm"), default=["cold", "warm"],
                        help="which studies to run per N (default: cold warm)")
    args = parser.parse_args(argv)
    study_args = DEFAULT_STUDY if extra is None else extra
    args.work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    results = []
    for n in args.n:
        data = make_data(n, args.work, args.data, env)
        cache = args.work / f"cache-{n}"
        row = {"n": n}
        for phase in args.phases:
            out = args.work / f"out-{n}-{phase}"
            run_env = {**env, "AIGEN_CACHE_DIR": str(cache)}
            # With progress bars, as a user sees it: the longest silence on stderr is measured.
            cmd = [sys.executable, "-m", "aigen.cli", "study", "--data", str(data), "--out", str(out),
                   *study_args]
            row[phase] = run_child(cmd, run_env)
            config = out / "config.json"
            if config.is_file():
                row[phase]["stages"] = json.loads(config.read_text()).get("wall_seconds", {})
        reopen = [sys.executable, "-c",
                  "import sys,time;from aigen.data.dataset import load_dataset;t=time.perf_counter();"
                  "d=load_dataset(sys.argv[1],progress=False);print(time.perf_counter()-t)",
                  str(data)]
        t = subprocess.run(reopen, env={**env, "AIGEN_CACHE_DIR": str(cache)}, capture_output=True,
                           text=True)
        row["warm_reopen_s"] = round(float(t.stdout.strip() or "nan"), 2)
        if args.throughput and n == args.n[0]:
            row["throughput"] = throughput(data, args.throughput, str(cache))
        results.append(row)
        print(json.dumps(row), flush=True)
    # One record per (N, study options): a later invocation adds to what earlier ones measured.
    record = args.work / "bench.json"
    runs = json.loads(record.read_text())["runs"] if record.is_file() else []
    runs.append({"study_args": study_args, "machine": os.uname().nodename,
                 "cores": os.cpu_count(), "results": results})
    record.write_text(json.dumps({"runs": runs}, indent=1))
    print("\n| N | phase | wall s | peak RSS GiB | peak anon GiB | load | prefix | train "
          "| lr study | sweep | diagnostics | rest | longest silence s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in results:
        for phase in args.phases:
            r = row[phase]
            st = r.get("stages", {})
            parts = {"load": st.get("load_data", 0.0),
                     "prefix": sum(v for k, v in st.items() if k.startswith("prefix_activations")),
                     "train": sum(v for k, v in st.items() if k.startswith("train:")),
                     "lr_study": st.get("lr_study", 0.0), "sweep": st.get("sweep", 0.0),
                     "diagnostics": st.get("diagnostics", 0.0)}
            rest = r["wall_s"] - sum(parts.values())  # start-up, exploration, split, results
            print(f"| {row['n']} | {phase} | {r['wall_s']} | {r['peak_rss_gib']} | "
                  f"{r['peak_rss_anon_gib']} | "
                  + " | ".join(f"{v:.1f}" for v in parts.values())
                  + f" | {rest:.1f} | {r.get('longest_silence_s', '')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

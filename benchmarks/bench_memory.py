"""B4: peak RSS of predict (into the store) on a cube 4x larger, divided by the peak on the base cube.

Each run is a fresh process (threaded scheduler, 2 threads), so ru_maxrss is that run's own peak.

    .venv/bin/python benchmarks/bench_memory.py [--base 1024]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from _common import load_report, make_ckpt, make_store, workdir

CHILD = """
import json, resource, shutil, sys, time
import dask, geoarray, zarr
store, ckpt = sys.argv[1], sys.argv[2]
for v in ("probabilities", "mask", "class"):
    shutil.rmtree(f"{store}/{v}", ignore_errors=True)
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
with dask.config.set(scheduler="threads", num_workers=2):
    geoarray.predict(geoarray.open_cube(store), ckpt, store=store)
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "start_mb": rss0 / 1024, "seconds": time.perf_counter() - t}))
"""


def run(store: str, ckpt: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, store, ckpt], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=int, default=1024)
    ap.add_argument("--times", type=int, default=2)
    args = ap.parse_args()
    wd = workdir("b4")
    ckpt = str(make_ckpt(wd / "unet.safetensors", "unet", 4, num_classes=4, depth=3, width=8))
    print(load_report())
    small = str(make_store(wd / f"c{args.base}.zarr", times=args.times, size=args.base))
    big = str(make_store(wd / f"c{2 * args.base}.zarr", times=args.times, size=2 * args.base))
    a, b = run(small, ckpt), run(big, ckpt)
    print(f"  base {args.times}x{args.base}²  : peak {a['peak_mb']:.0f} MB ({a['seconds']:.1f} s)")
    print(f"  4x   {args.times}x{2 * args.base}²: peak {b['peak_mb']:.0f} MB ({b['seconds']:.1f} s)")
    print(f"B4 peak RSS ratio 4x/base: {b['peak_mb'] / a['peak_mb']:.2f} (target <= 1.2)")


if __name__ == "__main__":
    main()

"""Tests that can fail: apply each mutation of a README claim to a copy of the repo and check a test catches it.

Each row is an exact string replacement in one file of ``geoarray/`` (the script stops, loudly, if the string
is not there exactly once, so it stays honest as the code moves) and the tests that must fail with it. The
rows run one after another, each in a temporary copy of ``geoarray/``, ``tests/`` and ``pyproject.toml``,
with this interpreter and ``PYTHONPATH`` set to the copy. pytest does not collect this file (its name does not
match ``test_*.py``).

Usage, from the repository root::

    .venv/bin/python tests/mutants.py              # every row
    .venv/bin/python tests/mutants.py -k resume    # rows whose name contains "resume"
    .venv/bin/python tests/mutants.py --baseline   # also check each test passes without its mutation

A row reads ``caught`` when pytest reports failed tests (exit code 1), ``MISSED`` when the tests pass, and
``ERROR`` for anything else (a test that was not found, a collection error): only ``caught`` is a success.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    claim: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


SEAMLESS = "tests/test_predict.py::test_seamless_small_chunks_equal_one_chunk_and_whole_image"
RESUME = "tests/test_train.py::test_resume_continues_the_same_run"
RF = "tests/models/test_models.py::test_receptive_field_matches_brute_force_perturbation"

MUTATIONS = [
    Mutation(
        "halo-halved",
        "seamless predict equals whole-image inference",
        "geoarray/predict.py",
        'return int(meta.get("halo", 0))\n',
        'return int(meta.get("halo", 0)) // 2\n',
        (SEAMLESS,),
    ),
    Mutation(
        "halo-one-stride-short",
        "seamless predict equals whole-image inference",
        "geoarray/predict.py",
        'return int(meta.get("halo", 0))\n',
        'return max(0, int(meta.get("halo", 0)) - stride)\n',
        (SEAMLESS,),
    ),
    Mutation(
        "explicit-halo-ignored",
        "predict(halo=N) reads N pixels around each block",
        "geoarray/predict.py",
        "return int(math.ceil(int(halo) / stride) * stride)\n",
        "return 0\n",
        ("tests/test_predict.py::test_chunk_smaller_than_halo",),
    ),
    Mutation(
        "receptive-field-one-short",
        "seamless predict equals whole-image inference (the halo is the measured receptive field)",
        "geoarray/models/base.py",
        "return max(c0 - lo, hi - (c0 + s - 1), 0)\n",
        "return max(c0 - lo, hi - (c0 + s - 1), 0) - 1\n",
        (RF,),
    ),
    Mutation(
        "receptive-field-one-long",
        "the receptive field is exact (a larger one only costs speed)",
        "geoarray/models/base.py",
        "return max(c0 - lo, hi - (c0 + s - 1), 0)\n",
        "return max(c0 - lo, hi - (c0 + s - 1), 0) + 1\n",
        (RF,),
    ),
    Mutation(
        "chunk-exists-always-false",
        "resume after kill does only the missing work",
        "geoarray/_writer.py",
        "            done = done and _chunk_key(zarrays[n], tuple(okey[1:])) in present[n]\n",
        "            done = False\n",
        (
            "tests/test_predict.py::test_resume_writes_only_the_missing_chunks",
            "tests/test_predict.py::test_killed_run_resumes_byte_identical",
        ),
    ),
    Mutation(
        "same-checkpoint-check-dropped",
        "resume refuses a partial output from another checkpoint",
        "geoarray/_writer.py",
        'elif attrs.get("checkpoint_sha256") != sha:',
        "elif False:",
        ("tests/test_predict.py::test_partial_output_of_another_checkpoint_is_refused",),
    ),
    Mutation(
        "direct-read-twice",
        "each Zarr chunk is read once per epoch",
        "geoarray/chips/stream.py",
        '            vals["img"] = read(*src, (times, self._band_idx, sl["y"], sl["x"]))\n',
        '            read(*src, (times, self._band_idx, sl["y"], sl["x"]))\n'
        '            vals["img"] = read(*src, (times, self._band_idx, sl["y"], sl["x"]))\n',
        ("tests/test_chips.py::test_stream_reads_each_chunk_once_per_epoch_on_the_direct_path",),
    ),
    Mutation(
        "every-rank-all-windows",
        "DDP ranks train on disjoint shards",
        "geoarray/training/loop.py",
        "    blocks = sorted({w.block for w in windows})\n",
        "    return windows\n",
        ("tests/test_distributed.py::test_ddp_two_ranks_keep_identical_weights_and_learn",),
    ),
    Mutation(
        "resume-weights-not-restored",
        "training resume continues the same run",
        "geoarray/training/loop.py",
        "                self.net.load_state_dict(st.weights)  # with the task's heads (an SSL projector)\n",
        "                pass\n",
        (RESUME,),
    ),
    Mutation(
        "resume-stream-epoch-not-restored",
        "training resume continues the same run",
        "geoarray/training/loop.py",
        "        self.train_stream.epoch = self.start_epoch\n",
        "",
        (RESUME,),
    ),
    Mutation(
        "bf16-autocast-no-op",
        "bf16 autocast",
        "geoarray/training/loop.py",
        "            return torch.autocast(dev, dtype=torch.bfloat16)\n",
        "            return nullcontext()\n",
        ("tests/test_train.py::test_bf16_autocast_runs_the_model_in_bfloat16",),
    ),
    Mutation(
        "s3-fit-uploads-only-at-the-end",
        "fit into object storage resumes after a kill",
        "geoarray/training/loop.py",
        "                self.files.publish()  # object storage: this epoch's finished files, one put each\n",
        "",
        ("tests/test_fit_object_storage.py::test_a_run_killed_mid_epoch_resumes_from_s3_to_the_uninterrupted_weights",),
    ),
    Mutation(
        "integer-stac-without-valid",
        "nodata in a STAC cube is invalid, not data",
        "geoarray/io/stac.py",
        '        ds["valid"] = (da != plan.fill).all("band")\n',
        '        ds["valid"] = (da == da).all("band")\n',
        ("tests/io/test_stac.py::test_an_integer_cube_marks_pixels_that_are_nodata_in_any_band_invalid",),
    ),
    Mutation(
        "tiles-without-halo",
        "blocks run tile by tile stay seamless",
        "geoarray/_tiles.py",
        "            y0, x0 = max(0, oy + ty - h), max(0, ox + tx - h)  # the tile + halo, inside the window\n",
        "            y0, x0 = oy + ty, ox + tx\n",
        ("tests/test_predict.py::test_blocks_larger_than_the_cpu_tile_run_tile_by_tile_and_stay_seamless",),
    ),
    Mutation(
        "resume-with-another-halo",
        "a killed run, run again, finishes the same outputs (a resume with another halo is refused)",
        "geoarray/_writer.py",
        "        if key in old.attrs and old.attrs[key] != da.attrs.get(key):\n",
        "        if False:\n",
        ("tests/bad_inputs/test_hunt2_run.py::test_a_resume_with_another_halo_is_refused",),
    ),
    Mutation(
        "declared-nodata-trained-as-data",
        "fit and predict mask a declared nodata alike",
        "geoarray/training/__init__.py",
        '    if "valid" not in cube.data_vars:  # a declared nodata (e.g. from rioxarray) marks pixels, as in predict\n',
        "    if False:\n",
        ("tests/bad_inputs/test_hunt2_run.py::test_fit_masks_a_declared_nodata_like_predict",),
    ),
    Mutation(
        "auto-device-decided-by-the-client",
        "under a distributed client device='auto' is each worker's choice",
        "geoarray/_devices.py",
        '    if device == "auto" and not local:\n',
        "    if False:\n",
        ("tests/test_model_placement.py::test_auto_device_is_the_workers_choice_and_keeps_cpu_tiles",),
    ),
    Mutation(
        "threads-load-the-model-again",
        "tasks on threads reuse the model predict loaded",
        "geoarray/predict.py",
        "    remember_model(spec, ck.model)  # tasks in this process (threads) take it, rather than load it again\n",
        "",
        ("tests/test_model_placement.py::test_threaded_predict_reads_the_checkpoint_once_and_matches_a_fresh_load",),
    ),
    Mutation(
        "cpu-tile-ignores-the-halo",
        "CPU tiles grow with the halo (a deep model's halo is not half its pixels)",
        "geoarray/_tiles.py",
        "    side = min(max(CPU_TILE, TILE_PER_HALO * int(halo)), max(CPU_TILE, CPU_TILE_MAX))\n",
        "    side = CPU_TILE\n",
        ("tests/test_predict.py::test_cpu_tile_grows_with_the_halo",),
    ),
    Mutation(
        "cli-gives-freed-memory-back",
        "the geoarray command keeps the memory torch frees",
        "geoarray/cli/_app.py",
        "    keep_freed()  # this process is geoarray's: keep the memory torch frees for its next tensors (geoarray._heap)\n",
        "",
        ("tests/test_heap.py::test_the_geoarray_command_keeps_freed_memory",),
    ),
    Mutation(
        "stac-pasted-window-without-its-mask",
        "from_stac honours an asset's GDAL mask on the items' grid",
        "geoarray/io/_odc_driver.py",
        "                        _mask_pasted(rdr, bidx, rr, pix, cfg)\n",
        "                        pass\n",
        ("tests/io/test_stac_masks.py::test_masked_pixels_are_invalid_on_the_items_grid",),
    ),
    Mutation(
        "stac-reprojected-alpha-ignored",
        "from_stac honours an alpha band when it reprojects",
        "geoarray/io/_odc_driver.py",
        "    if alpha is None:\n        return\n    a = np.zeros",
        "    if True:\n        return\n    a = np.zeros",
        ("tests/io/test_stac_masks.py::test_an_alpha_band_masks_a_multi_band_asset",),
    ),
    Mutation(
        "stac-features-resume-with-other-bands",
        "a resumed stac-features run reads what the first run read",
        "geoarray/stac_features.py",
        "            if key not in attrs or attrs[key] == source[key]:\n",
        "            if True:\n",
        ("tests/bad_inputs/test_stac_resume.py::test_resume_with_other_bands_or_engine_is_refused_before_any_write",),
    ),
]


def _copy(dst: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    shutil.copytree(ROOT / "geoarray", dst / "geoarray", ignore=ignore)
    shutil.copytree(ROOT / "tests", dst / "tests", ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", dst / "pyproject.toml")


def _env(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(copy)
    return env


def _check_import(copy: Path) -> None:
    """The copy, not an installed geoarray, must be what the tests import."""
    out = subprocess.run(
        [sys.executable, "-c", "import geoarray; print(geoarray.__file__)"],
        cwd=copy,
        env=_env(copy),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(out).resolve().is_relative_to(copy.resolve()):
        sys.exit(f"the tests would import geoarray from {out}, not from the copy {copy}; stopping")


def _pytest(copy: Path, test: str, log: Path, *, stop_first: bool = True) -> tuple[int, float]:
    # -m "not gpu" replaces the default "not slow and not gpu": a row may name a slow test on purpose; -n 0: a
    # row's one test runs in pytest's own process (xdist workers cost more to start than they save here)
    cmd = [sys.executable, "-m", "pytest", test, "-q", "-p", "no:cacheprovider", "-m", "not gpu", "-n", "0"]
    cmd += ["-x"] if stop_first else ["-rf"]
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=copy, env=_env(copy), stdout=f, stderr=subprocess.STDOUT).returncode
    return rc, time.perf_counter() - t0


def _apply(copy: Path, m: Mutation) -> str:
    path = copy / m.file
    text = path.read_text()
    n = text.count(m.old)
    if n != 1:
        sys.exit(
            f"mutation {m.name!r}: the target string occurs {n} times in {m.file} (expected exactly once); "
            f"update the row to the current code.\n--- target ---\n{m.old}"
        )
    path.write_text(text.replace(m.old, m.new))
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-k", default="", help="run only the rows whose name contains this")
    ap.add_argument("--baseline", action="store_true", help="also run each test without its mutation")
    ap.add_argument("--keep", action="store_true", help="keep the temporary copy and pytest logs")
    ap.add_argument(
        "--all-params", action="store_true", help="run every parametrization (no -x), to see which catch it"
    )
    args = ap.parse_args(argv)
    rows = [m for m in MUTATIONS if args.k in m.name]
    if not rows:
        sys.exit(f"no row matches -k {args.k!r}; rows: {', '.join(m.name for m in MUTATIONS)}")
    # every target is checked before any test runs: a stale row fails at once
    for m in rows:
        if (ROOT / m.file).read_text().count(m.old) != 1:
            sys.exit(f"mutation {m.name!r}: target string not found exactly once in {m.file}:\n{m.old}")
    tmp = Path(tempfile.mkdtemp(prefix="geoarray-mutants-"))
    copy, logs = tmp / "repo", tmp / "logs"
    logs.mkdir()
    _copy(copy)
    _check_import(copy)
    results: list[tuple[str, str, str, float]] = []
    try:
        if args.baseline:
            for test in sorted({t for m in rows for t in m.tests}):
                rc, secs = _pytest(copy, test, logs / f"baseline-{test.split('::')[-1]}.log")
                verdict = "passes" if rc == 0 else f"FAILS (rc {rc})"
                results.append(("(none)", test, verdict, secs))
                print(f"(none) | {test} | {verdict} | {secs:.0f} s", flush=True)
        for m in rows:
            original = _apply(copy, m)
            try:
                for test in m.tests:
                    log = logs / f"{m.name}-{test.split('::')[-1]}.log"
                    rc, secs = _pytest(copy, test, log, stop_first=not args.all_params)
                    verdict = "caught" if rc == 1 else "MISSED" if rc == 0 else f"ERROR (pytest rc {rc}, see {log})"
                    results.append((m.name, test, verdict, secs))
                    print(f"{m.name} | {test} | {verdict} | {secs:.0f} s", flush=True)
            finally:
                (copy / m.file).write_text(original)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}")
    print()
    print("| mutation | test | result | seconds |")
    print("|---|---|---|---|")
    for name, test, verdict, secs in results:
        print(f"| {name} | {test.removeprefix('tests/')} | {verdict} | {secs:.0f} |")
    bad = [r for r in results if r[2] not in ("caught", "passes")]
    if bad:
        print(f"\n{len(bad)} row(s) not caught (or failing without the mutation)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

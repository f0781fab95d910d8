"""The wheels a Pi installs fieldlink from on its first boot, offline.

`collect_wheels(...)` returns the files for the boot partition's `fieldlink/wheels/`:

1. the fieldlink wheel, built from the source tree (`pip wheel --no-deps`), cached by a hash
   of the tree's tracked inputs (pyproject.toml and the package sources), so a bulk run
   builds it once;
2. every dependency of ``fieldlink[EXTRA]`` (the `gateway` extra by default) for the Pi's
   platform, with ``pip download --only-binary=:all: --platform ... --python-version ...``
   (Raspberry Pi OS Bookworm: CPython 3.11 on aarch64, manylinux wheels up to
   manylinux_2_28 — Bookworm's glibc is 2.36), plus pip itself so
   the installer can bootstrap a venv on a Python without `ensurepip`.

Downloads are cached in `~/.cache/fieldlink/wheels/cp311-<platform>-<hash>/`, one directory
per requirement set (`--refresh-wheels` resolves again); pip's own progress bars show on
stderr.  `--wheels-dir DIR` replaces all of
this with prebuilt wheels, checked to contain a fieldlink wheel.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import ProvisionError

__all__ = ["DEFAULT_PLATFORMS", "DEFAULT_PYTHON", "WheelOptions", "collect_wheels",
           "default_cache", "requirements", "source_root"]

#: Bookworm has glibc 2.36: manylinux_2_28 wheels run too (and newer releases ship only those)
DEFAULT_PLATFORMS = ("manylinux2014_aarch64", "manylinux_2_17_aarch64",
                     "manylinux_2_28_aarch64")
#: Raspberry Pi OS Bookworm's python3
DEFAULT_PYTHON = "3.11"


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fieldlink" / "wheels"


def source_root() -> Path | None:
    """The fieldlink source tree this module runs from, if it is a checkout."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "edge").is_dir() else None


@dataclass(frozen=True)
class WheelOptions:
    platforms: tuple[str, ...] = DEFAULT_PLATFORMS
    python_version: str = DEFAULT_PYTHON
    extra: str = "gateway"
    cache: Path = default_cache()
    source: Path | None = None
    show_progress: bool = True


def requirements(pyproject: Path, extra: str) -> list[str]:
    """The core dependencies plus those of `extra`, from pyproject.toml."""
    try:
        project = tomllib.loads(pyproject.read_text())["project"]
    except (OSError, tomllib.TOMLDecodeError, KeyError) as exc:
        raise ProvisionError(f"{pyproject}: cannot read the project dependencies: "
                             f"{exc}") from None
    reqs = list(project.get("dependencies", []))
    if extra:
        extras = project.get("optional-dependencies", {})
        if extra not in extras:
            raise ProvisionError(f"{pyproject} has no extra {extra!r} "
                                 f"(known: {', '.join(sorted(extras))})")
        reqs += [r for r in extras[extra] if not r.startswith("fieldlink")]
    return reqs


def _tree_hash(root: Path) -> str:
    digest = hashlib.sha256()
    files = [root / "pyproject.toml"]
    for pkg in ("edge", "gateway", "cloud", "firmware_sim"):
        files += sorted(p for p in (root / pkg).rglob("*")
                        if p.is_file() and "__pycache__" not in p.parts)
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _pip(args: Sequence[str], what: str, *, quiet: bool) -> None:
    cmd = [sys.executable, "-m", "pip", *args, "--disable-pip-version-check"]
    if quiet:
        cmd.append("-q")
    proc = subprocess.run(cmd, stdout=sys.stderr if not quiet else subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
        raise ProvisionError(f"{what} failed (pip exit {proc.returncode}):\n{tail}")


def _can_build_here() -> bool:
    """True when this interpreter has the build backend pyproject.toml asks for."""
    from importlib import metadata

    try:
        version = tuple(int(x) for x in metadata.version("setuptools").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return False
    if version < (68, 0):
        return False
    # bdist_wheel lives in setuptools itself from 70.1, in the `wheel` package before
    try:
        return version >= (70, 1) or bool(metadata.version("wheel"))
    except metadata.PackageNotFoundError:
        return False


def build_fieldlink_wheel(root: Path, cache: Path, *, quiet: bool) -> Path:
    target = cache / "fieldlink-build" / _tree_hash(root)
    found = sorted(target.glob("fieldlink-*.whl"))
    if found:
        return found[-1]
    with tempfile.TemporaryDirectory(prefix="fieldlink-wheel-") as tmp:
        args = ["wheel", "--no-deps", "--wheel-dir", tmp, str(root)]
        if _can_build_here():
            args.insert(1, "--no-build-isolation")  # offline and fast
        _pip(args, f"building the fieldlink wheel from {root}", quiet=quiet)
        wheels = list(Path(tmp).glob("fieldlink-*.whl"))
        if len(wheels) != 1:
            raise ProvisionError(f"pip wheel produced {len(wheels)} fieldlink wheels in {tmp}")
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(wheels[0], target / wheels[0].name)
    # a build per source state: keep the few most recent, not every edit's
    builds = sorted(target.parent.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in builds[5:]:
        shutil.rmtree(old, ignore_errors=True)
    return target / wheels[0].name


def download_dependencies(reqs: list[str], opts: WheelOptions, *,
                          refresh: bool = False) -> list[Path]:
    """Wheels of `reqs` (and pip) for the target platform, cached per requirement set.

    The cache key covers the requirements, platforms and Python version, so a cached set is
    exactly one resolution: later runs reuse it without asking PyPI (offline, and every
    gateway of a bulk run gets the same versions).  `refresh` resolves again.
    """
    spec = "\n".join([*reqs, "pip", opts.python_version, *opts.platforms])
    key = hashlib.sha256(spec.encode()).hexdigest()[:16]
    dest = opts.cache / f"cp{opts.python_version.replace('.', '')}-{opts.platforms[0]}-{key}"
    done = dest / ".complete"
    if done.exists() and not refresh:
        return sorted(dest.glob("*.whl"))
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    args = ["download", "--only-binary=:all:", "--python-version", opts.python_version,
            "--implementation", "cp", "--dest", str(partial)]
    for plat in opts.platforms:
        args += ["--platform", plat]
    args += [*reqs, "pip"]
    _pip(args, f"downloading the {opts.extra or 'core'} dependencies for "
               f"{', '.join(opts.platforms)} / Python {opts.python_version}",
         quiet=not opts.show_progress)
    (partial / ".complete").write_text(spec + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)
    return sorted(dest.glob("*.whl"))


def prebuilt(wheels_dir: Path) -> list[Path]:
    wheels = sorted(wheels_dir.glob("*.whl"))
    if not any(w.name.startswith("fieldlink-") for w in wheels):
        raise ProvisionError(f"--wheels-dir {wheels_dir} holds no fieldlink-*.whl")
    return wheels


def collect_wheels(opts: WheelOptions, *, wheels_dir: Path | None = None,
                   refresh: bool = False) -> list[Path]:
    """The wheel files to put on the card (see module docstring)."""
    if wheels_dir is not None:
        return prebuilt(wheels_dir)
    root = opts.source or source_root()
    if root is None:
        raise ProvisionError("fieldlink is not running from a source tree, so it cannot "
                             "build its wheel: give --source DIR (a fieldlink checkout) or "
                             "--wheels-dir DIR (prebuilt wheels)")
    own = build_fieldlink_wheel(root, opts.cache, quiet=not opts.show_progress)
    deps = download_dependencies(requirements(root / "pyproject.toml", opts.extra), opts,
                                 refresh=refresh)
    return [own, *deps]

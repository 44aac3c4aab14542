"""Build one guest image from an image recipe, offline, with gcc and binutils.

The shell around `edgeagent.recipe` (validation) and `edgeagent.buildplan` (every decision
about flags, inputs and generated code): it reads ``<recipe dir>/recipe.toml``, checks the
recipe's name matches its folder and its sources exist, writes the generated file, runs the
planned commands from the image-recipes root, and publishes the image atomically (temporary
file in the output folder, then ``os.replace``).

It does not boot images (``edgeagent boot`` does) and does not use the network. Builds are
synchronous: it is a one-shot developer command that runs a handful of compiler processes.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgeagent.buildplan import BuildPlan, check_image, plan_build
from edgeagent.errors import BuildError, RecipeError
from edgeagent.recipe import Recipe, parse_recipe

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class BuiltImage:
    """A finished image."""

    path: Path
    sha256: str
    recipe: Recipe
    platform: str


def load_recipe(recipe_dir: Path) -> Recipe:
    """Read and validate ``recipe_dir/recipe.toml``, including that its sources exist.

    Raises:
        RecipeError: the file is missing or invalid, its name does not match the folder,
            or a listed source file does not exist.
    """
    path = recipe_dir / "recipe.toml"
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise RecipeError(f"{path}: no recipe.toml in {recipe_dir}") from exc
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read: {exc.strerror}") from exc
    recipe = parse_recipe(data, filename=str(path))
    if recipe.name != recipe_dir.resolve().name:
        raise RecipeError(
            f"{path}: field 'name': expected the recipe folder's name "
            f"{recipe_dir.resolve().name!r}, got {recipe.name!r}"
        )
    for i, src in enumerate(recipe.sources):
        if not (recipe_dir / src).is_file():
            raise RecipeError(
                f"{path}: field 'sources[{i}]': expected an existing file, "
                f"but {recipe_dir / src} does not exist"
            )
    return recipe


def default_output(recipe_dir: Path, recipe: Recipe, platform: str) -> Path:
    """Return image-recipes/out/<name>.<platform> for a recipe folder."""
    return recipe_dir.resolve().parent / "out" / f"{recipe.name}.{platform}"


def _run(argv: tuple[str, ...], cwd: Path, what: str) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
    try:
        proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise BuildError(f"{what}: tool not found: {argv[0]} (install gcc and binutils)") from exc
    if proc.returncode != 0:
        output = (proc.stderr + proc.stdout).strip()
        raise BuildError(f"{what} failed (exit {proc.returncode}):\n{output}")


def _run_plan(plan: BuildPlan, root: Path, recipe: Recipe, platform: str, say: Progress) -> bytes:
    build_dir = root / plan.build_dir
    if build_dir.exists():
        shutil.rmtree(build_dir)
    (build_dir / "obj").mkdir(parents=True)
    (root / plan.generated_path).write_text(plan.generated_source, encoding="ascii")
    say(f"building {recipe.name} {recipe.version} for {platform}")
    for cmd in plan.commands:
        say(f"  {cmd.what}")
        _run(cmd.argv, root, cmd.what)
    return (root / plan.image_path).read_bytes()


def build_image(
    recipe_dir: Path,
    platform: str | None = None,
    output: Path | None = None,
    *,
    progress: Progress | None = None,
) -> BuiltImage:
    """Build the image for one recipe and platform.

    Args:
        recipe_dir: the recipe folder, ``image-recipes/<name>``.
        platform: ``hvt``, ``qemu`` or ``xen``; None means the recipe's first platform.
        output: where to write the image; None means ``image-recipes/out/<name>.<platform>``.
        progress: called with one line of text per step.

    Returns:
        The built image, with its sha256.

    Raises:
        RecipeError: the recipe is invalid or does not support `platform`.
        BuildError: the library OS is missing or a tool failed.
    """
    say = progress or (lambda _line: None)
    recipe = load_recipe(recipe_dir)
    if platform is None:
        platform = recipe.platforms[0]
    if platform not in recipe.platforms:
        raise RecipeError(
            f"{recipe_dir / 'recipe.toml'}: field 'platforms': platform {platform!r} is not "
            f"supported by this recipe (it lists: {', '.join(recipe.platforms)})"
        )
    root = recipe_dir.resolve().parent
    if not (root / "libos" / platform / "link.lds").is_file():
        raise BuildError(
            f"{root}: no library OS for platform {platform!r} next to the recipe "
            f"(expected {root / 'libos' / platform / 'link.lds'})"
        )
    if not (root.parent / "abi" / "hvt_abi.h").is_file():
        raise BuildError(f"{root.parent / 'abi' / 'hvt_abi.h'}: the shared ABI header is missing")

    plan = plan_build(recipe, platform, root_abs=str(root))
    build_dir = root / plan.build_dir
    build_dir.parent.mkdir(parents=True, exist_ok=True)
    # One build of a given recipe and platform at a time per tree (make -j, tests and a
    # developer may overlap): the build folder is fixed so that builds are reproducible.
    with open(build_dir.parent / f".{build_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        image = _run_plan(plan, root, recipe, platform, say)
    check_image(image, platform)
    out = output if output is not None else default_output(recipe_dir, recipe, platform)
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(image)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # An image is data for a tender, not a host program.
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return BuiltImage(
        path=out, sha256=hashlib.sha256(image).hexdigest(), recipe=recipe, platform=platform
    )

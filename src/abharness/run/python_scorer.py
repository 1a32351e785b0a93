"""Where a ``python`` scorer's function may come from, and loading it safely.

A scorer is a function *defined* in a file of the project (the spec's folder, then the
working directory), loaded under a private module name without touching ``sys.path``
or ``sys.modules``; or, with ``trusted: true``, one defined in an installed third-party
package. Never Python's standard library, even re-exported by a project file: a list of
dangerous modules cannot be complete (``cProfile:run`` executes its argument), where a
function was defined can be checked.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from ..errors import SpecError
from ..hashing import content_hash


def _is_standard_library(module: ModuleType) -> bool:
    """Python's own modules: built in, frozen, or files under the interpreter's library
    folder outside site-packages."""
    top = module.__name__.split(".")[0]
    if top in sys.stdlib_module_names or top in sys.builtin_module_names:
        return True
    origin = getattr(module, "__file__", None)
    if origin is None:
        return True  # built in or frozen
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    path = Path(origin).resolve()
    return stdlib in path.parents and "site-packages" not in path.parts


def load_function(target: str, base_dir: Path, name: str, trusted: bool) -> Callable[..., Any]:
    """Load ``module:function`` without touching ``sys.path`` or ``sys.modules``.

    A scorer is a function *defined* in a project file: ``module.py`` (or a package) in
    the spec's folder or the working directory, loaded under a private name so a project
    file named like a library (``rapidfuzz.py``) never shadows the library. With
    ``trusted: true`` it may instead be defined in an installed third-party package.
    Never the standard library, even re-exported by a project file: a deny-list of
    dangerous modules cannot be complete (``cProfile:run`` executes its argument), an
    allow-list of where the function was defined can."""
    module_name, _, attr = target.partition(":")
    parts = module_name.split(".")
    module: ModuleType | None = None
    for folder in dict.fromkeys((base_dir.resolve(), Path.cwd().resolve())):
        for candidate in (
            folder.joinpath(*parts).with_suffix(".py"),
            folder.joinpath(*parts, "__init__.py"),
        ):
            if candidate.is_file():
                module = _load_file(
                    candidate, f"abharness_scorer_{content_hash(str(candidate), 12)}", name
                )
                break
        if module is not None:
            break
    if module is None:
        if not trusted:
            raise SpecError(
                f"scorer {name}: {module_name} is not a file in {base_dir} or {Path.cwd()}; "
                "a function from an installed package runs only with trusted: true"
            )
        if parts[0] in sys.stdlib_module_names or parts[0] in sys.builtin_module_names:
            raise SpecError(
                f"scorer {name}: {target} is in Python's standard library: a scorer must be "
                "defined in a project file or an installed third-party package"
            )
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise SpecError(f"scorer {name}: cannot import {target}: {exc}") from exc
        if _is_standard_library(module):
            raise SpecError(
                f"scorer {name}: {target} is in Python's standard library: a scorer must be "
                "defined in a project file or an installed third-party package"
            )
    fn = getattr(module, attr, None)
    if fn is None:
        raise SpecError(f"scorer {name}: cannot import {target}: {module_name} has no {attr!r}")
    defined_in = getattr(fn, "__module__", None) or ""
    home = module.__name__ if module.__name__.startswith("abharness_scorer_") else parts[0]
    if not (inspect.isfunction(fn) and (defined_in == home or defined_in.startswith(f"{home}."))):
        where = f"in {defined_in}" if defined_in else "elsewhere"
        raise SpecError(
            f"scorer {name}: {target} is not a function defined in {module_name} (it is "
            f"{type(fn).__name__} defined {where}): name the function where it is written"
        )
    return fn


def _load_file(path: Path, private_name: str, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(
        private_name,
        path,
        submodule_search_locations=[str(path.parent)] if path.name == "__init__.py" else None,
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise SpecError(
            f"scorer {name}: cannot import {path}: {type(exc).__name__}: {exc}"
        ) from exc
    return module

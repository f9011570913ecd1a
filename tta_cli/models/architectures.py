"""Turn an architecture reference into an ``nn.Module``.

A reference is one of:
- a name from the built-in zoo (``airnet``, ``wrn16_4``, ``resnet26`` ...);
- ``torchvision:NAME`` or ``timm:NAME`` when those packages are installed;
- ``package.module:factory``, a callable taking ``num_classes``;
- ``path/to/file.py:factory``, the same from a Python file (a relative path in a bundle's
  ``model.toml`` is relative to the bundle's folder; ``prepare`` records it absolute). The file
  holds its own code: it may import installed packages, not files beside it.

Building from a module or a file runs its code, as importing it would: name only code you trust.
A bundle's file runs only when this machine trusts its content (``tta_cli.models.trust``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from torch import nn

from tta_cli.errors import TTAError, UsageError
from tta_cli.models.trust import is_trusted
from tta_cli.models.zoo import ZOO

HUBS = ("torchvision", "timm")
"""Model libraries whose architectures are named ``HUB:NAME``."""


def build_architecture(reference: str, num_classes: int, bundle: Path | None = None) -> nn.Module:
    """The model ``reference`` names, built for ``num_classes``. ``bundle``: the folder of the
    bundle whose ``model.toml`` names it; a file it names is relative to that folder and must be
    trusted on this machine. Without it the caller names the reference itself (``prepare``)."""
    factory = _resolve_factory(reference, bundle)
    model = factory(num_classes=num_classes) if reference in ZOO else _build(factory, reference, num_classes)
    if not isinstance(model, nn.Module):
        raise UsageError(f"Architecture {reference!r} returned a {type(model).__name__}, not a torch nn.Module.")
    return model


def _build(factory: Callable[..., nn.Module], reference: str, num_classes: int) -> nn.Module:
    """Call a factory from outside tta-cli; what fails inside it is one sentence (the zoo's are
    called as they are: a failure there is a bug of tta-cli's, with its traceback)."""
    try:
        inspect.signature(factory).bind(num_classes=num_classes)
    except TypeError as error:
        raise UsageError(
            f"Architecture {reference!r} cannot be built with num_classes={num_classes}: {error}."
        ) from error
    except ValueError:  # no signature to read (some built-in callables): the call will tell
        pass
    try:
        return factory(num_classes=num_classes)
    except TTAError:
        raise
    except Exception as error:
        raise UsageError(f"Architecture {reference!r} failed to build ({_failure(error)}).") from error


def _failure(error: Exception) -> str:
    """What Python said, as a user's code raised it."""
    return f"{type(error).__name__}: {error}"


def _resolve_factory(reference: str, bundle: Path | None = None) -> Callable[..., nn.Module]:
    if reference in ZOO:
        return ZOO[reference]
    match hub_model(reference):
        case ("torchvision", model_name):
            models = _import("torchvision.models", reference)
            return lambda num_classes: models.get_model(model_name, weights=None, num_classes=num_classes)
        case ("timm", model_name):
            timm = _import("timm", reference)
            return lambda num_classes: timm.create_model(model_name, pretrained=False, num_classes=num_classes)
    prefix, _, name = reference.rpartition(":") if is_file_reference(reference) else reference.partition(":")
    if name:
        if is_file_reference(reference):
            module = _load_file(Path(prefix) if bundle is None else bundle / prefix, reference, bundle)
        else:
            module = _import(prefix, reference, bundle)
        factory = getattr(module, name, None)
        if callable(factory):
            return factory
        raise UsageError(f"Module {prefix!r} has no callable {name!r}.")
    raise UsageError(
        f"Unknown architecture {reference!r}; use one of {', '.join(sorted(ZOO))}, "
        "torchvision:NAME, timm:NAME, package.module:factory or path/to/file.py:factory."
    )


def hub_model(reference: str) -> tuple[str, str] | None:
    """``(HUB, NAME)`` for ``torchvision:NAME`` or ``timm:NAME``; ``None`` for any other reference."""
    hub, _, name = reference.partition(":")
    return (hub, name) if hub in HUBS and name and not is_file_reference(reference) else None


def is_file_reference(reference: str) -> bool:
    """``path/to/file.py:factory``, as opposed to a module, zoo or hub reference."""
    return reference.rpartition(":")[0].endswith(".py")


def code_file(reference: str) -> Path | None:
    """The Python file a ``path/to/file.py:factory`` reference runs; ``None`` for any other."""
    return Path(reference.rpartition(":")[0]) if is_file_reference(reference) else None


def absolute_reference(reference: str, folder: Path | None = None) -> str:
    """The reference with a file path made absolute, as a bundle records it; a relative path is
    taken from ``folder`` (a bundle's, whose ``model.toml`` names it) or else the working one."""
    if not is_file_reference(reference):
        return reference
    path, _, name = reference.rpartition(":")
    return f"{(Path(path) if folder is None else folder / path).resolve()}:{name}"


def _load_file(path: Path, reference: str, bundle: Path | None) -> ModuleType:
    if not path.is_file():
        raise UsageError(f"Architecture {reference!r}: {path} does not exist.")
    source = path.read_bytes()  # checked and run as read: a file swapped in between never runs
    if bundle is not None and not is_trusted(source):
        raise UsageError(
            f"Bundle {bundle} builds its model by running {path}, which this machine does not trust "
            f"(new, or changed since it was trusted); read it, then run 'tta-cli trust {bundle}'."
        )
    # A name of its own per file, so that two files named model.py do not replace each other.
    name = f"tta_cli_architecture_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None:
        raise UsageError(f"Architecture {reference!r}: {path} cannot be loaded as Python.")
    module = importlib.util.module_from_spec(spec)
    try:
        # dont_inherit: the file runs under its own __future__ imports, not this module's.
        code = compile(source, str(path), "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as error:  # ValueError: null bytes, on Python 3.10
        raise UsageError(f"Architecture {reference!r}: {path} is not valid Python ({error}).") from error
    try:
        exec(code, module.__dict__)
    except TTAError:
        raise
    except ImportError as error:
        raise UsageError(
            f"Architecture {reference!r}: {path} failed at an import ({_failure(error)}); a model file may import "
            "installed packages only, not files beside it, since trust covers that one file."
        ) from error
    except Exception as error:
        raise UsageError(f"Architecture {reference!r}: running {path} failed ({_failure(error)}).") from error
    return module


def _import(module_name: str, reference: str, bundle: Path | None = None) -> ModuleType:
    if bundle is not None:
        _refuse_own_module(module_name, bundle)
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        raise UsageError(
            f"Architecture {reference!r} needs the Python module {module_name!r}, which is not installed."
        ) from error


def _refuse_own_module(module_name: str, bundle: Path) -> None:
    """A module a bundle names must not be one it ships (importable when Python runs from the
    bundle's folder): its own code runs only as a trusted file. Finding a top-level module runs
    none of its code."""
    top = module_name.partition(".")[0]
    if top in sys.modules:
        return
    spec = importlib.util.find_spec(top)
    places = [] if spec is None else [spec.origin, *(spec.submodule_search_locations or [])]
    if any(place and Path(place).resolve().is_relative_to(bundle.resolve()) for place in places):
        raise UsageError(
            f"Bundle {bundle} names the module {module_name!r}, which lies in the bundle's own folder; a bundle "
            "runs code of its own only as path/to/file.py:factory, once trusted with 'tta-cli trust'."
        )

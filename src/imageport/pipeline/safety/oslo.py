"""oslo.utils' format inspector, loaded without running ``oslo_utils.imageutils/__init__``.

Importing ``oslo_utils.imageutils.format_inspector`` first runs its package's ``__init__``,
which imports ``QemuImgInfo`` and with it ``oslo_utils.strutils``: about 200 regular
expressions for password masking compiled at import, 0.13 s of CPU (a tenth of what an
``imageport import`` spends starting up) for code imageport never calls. The inspector module
needs none of it. So, unless the package is already loaded, it is registered unexecuted (its
spec, path and loader, as ``import`` would make it), with a module ``__getattr__`` that still
hands ``QemuImgInfo`` to any later caller, importing it then.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

_PACKAGE = "oslo_utils.imageutils"


def _lazy_package() -> None:
    if _PACKAGE in sys.modules:
        return
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None:  # pragma: no cover - oslo.utils is a dependency
        raise ImportError(f"no module named {_PACKAGE}")
    package = importlib.util.module_from_spec(spec)

    def exported(name: str) -> object:
        # What the package's __init__ would have exported, imported on first use.
        if name == "QemuImgInfo":
            return importlib.import_module(f"{_PACKAGE}.qemu").QemuImgInfo
        raise AttributeError(f"module {_PACKAGE!r} has no attribute {name!r}")

    package.__getattr__ = exported  # type: ignore[method-assign]
    sys.modules[_PACKAGE] = package


_lazy_package()

from oslo_utils.imageutils import format_inspector  # noqa: E402 - after the package is set up

__all__ = ["format_inspector"]

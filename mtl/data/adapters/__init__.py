"""Dataset adapters by name. ``get_adapter("br35h", root)`` returns a ready adapter.

Modules are imported on first use, so that listing names needs no optional dependency.
"""

from __future__ import annotations

import importlib
from typing import Any

from mtl.data.adapters.base import Adapter, DataError, Record

# name -> "module:Class"
_REGISTRY: dict[str, str] = {
    "phantoms": "mtl.data.adapters.phantoms:PhantomAdapter",
    "figshare": "mtl.data.adapters.figshare:FigshareAdapter",
    "br35h": "mtl.data.adapters.br35h:Br35hAdapter",
    "class_folders": "mtl.data.adapters.class_folders:ClassFoldersAdapter",
    "brisc": "mtl.data.adapters.brisc:BriscAdapter",
    "lgg": "mtl.data.adapters.lgg:LggAdapter",
    "brats": "mtl.data.adapters.brats:BratsAdapter",
}


def adapter_names() -> list[str]:
    return sorted(_REGISTRY)


def adapter_class(name: str) -> type[Adapter]:
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown dataset format {name!r}; known: {', '.join(adapter_names())}"
        ) from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)


def get_adapter(name: str, root: Any = None, **options: Any) -> Adapter:
    return adapter_class(name)(root, **options)


__all__ = ["Adapter", "DataError", "Record", "adapter_class", "adapter_names", "get_adapter"]

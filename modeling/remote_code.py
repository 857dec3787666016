"""Writes the flat, self-contained remote code of a saved model or processor folder.

The source lives in the package folders (configuration/, modeling/, processing/) and imports across them with
`..` imports. A Hub folder is flat and transformers resolves only single-dot imports there, so each file that a
class needs is copied next to the weights with its relative imports rewritten to `from .<file> import`.
Run on files that are already flat (a model loaded with trust_remote_code), the same walk copies them unchanged.
transformers 4.x copies into its module cache only the files that an entry file imports itself, so every file
reached must be imported directly by one of the entry files; a deeper chain is refused here, at save time.
A file may import visionbridge inside a function only (guarded: the package's own save), never at module level.
Only what loading, forward, generate and chat run is reached this way; this writer and the rest of the saving
code stay in the installed package.
"""

import inspect
import re
import sys
from pathlib import Path

from torch import nn
from transformers.dynamic_module_utils import get_imports, get_relative_import_files
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

_RELATIVE_IMPORT = re.compile(r"^(\s*from\s+)(\.+)([\w.]*)(\s+import\b)", re.MULTILINE)
_PACKAGE_IMPORT = re.compile(r"^(from|import)\s+visionbridge\b", re.MULTILINE)

AUTO_MAP = {
    "AutoConfig": "configuration_visionbridge.VisionBridgeConfig",
    "AutoModelForImageTextToText": "modeling_visionbridge.VisionBridgeForConditionalGeneration",
    "AutoModelForVision2Seq": "modeling_visionbridge.VisionBridgeForConditionalGeneration",
    "AutoProcessor": "processing_visionbridge.VisionBridgeProcessor",
}
# The code files of a language model that ships its own code are saved under this prefix, apart from ours.
LANGUAGE_MODEL_PREFIX = "llm_"


def _resolve(source: Path, dots: str, dotted: str) -> Path:
    """File that `from <dots><dotted> import ...` in `source` refers to."""
    folder = source.parent
    for _ in range(len(dots) - 1):
        folder = folder.parent
    target = folder.joinpath(*dotted.split(".")).with_suffix(".py")
    if not target.is_file():
        raise ImportError(f"{source}: `from {dots}{dotted} import` must name a module file; {target} does not exist.")
    return target


def _flatten_imports(source: Path, text: str) -> tuple[str, list[Path]]:
    """Rewrite every relative import of `source` to a flat single-dot one; also return the files imported."""
    targets = []

    def flatten(match: re.Match) -> str:
        target = _resolve(source, match.group(2), match.group(3))
        targets.append(target)
        return f"{match.group(1)}.{target.stem}{match.group(4)}"

    return _RELATIVE_IMPORT.sub(flatten, text), targets


def flat_sources(classes: list[type]) -> dict[str, str]:
    """Flat file name -> rewritten source for the files defining `classes` and everything they import relatively."""
    entries = {Path(inspect.getfile(cls)).resolve() for cls in classes}
    pending = list(entries)
    direct: set[Path] = set(entries)
    origin: dict[str, Path] = {}
    sources: dict[str, str] = {}
    while pending:
        path = pending.pop()
        if path.name in origin:
            if origin[path.name] != path:
                raise ValueError(f"Two remote-code files share the flat name {path.name}: {origin[path.name]}, {path}")
            continue
        origin[path.name] = path
        text = path.read_text()
        if _PACKAGE_IMPORT.search(text):
            raise ValueError(
                f"{path} imports visionbridge at module level; it is not installed where remote code runs."
            )

        text, targets = _flatten_imports(path, text)
        pending.extend(targets)
        if path in entries:
            direct.update(targets)
        sources[path.name] = text
    indirect = sorted(str(path) for path in origin.values() if path not in direct)
    if indirect:
        raise ValueError(
            f"Remote-code files must be imported directly by {sorted(p.name for p in entries)}: {indirect}"
        )
    return sources


def write_remote_code(classes: list[type], save_directory: str | Path) -> None:
    for name, text in flat_sources(classes).items():
        Path(save_directory, name).write_text(text)


def language_model_sources(language_model: nn.Module) -> tuple[dict[str, str], dict[str, str]]:
    """For a language model whose classes are remote code (a model type transformers does not know): its code
    files under flat names with the `llm_` prefix, relative imports rewritten to match, and the `auto_map` of its
    config that names its config and model classes there. Two empty dicts for a model transformers knows."""
    classes = {"AutoConfig": type(language_model.config), "AutoModelForCausalLM": type(language_model)}
    if classes["AutoConfig"].model_type in CONFIG_MAPPING:
        return {}, {}

    def flat_name(path: str | Path) -> str:
        name = Path(path).name
        return name if name.startswith(LANGUAGE_MODEL_PREFIX) else LANGUAGE_MODEL_PREFIX + name

    def rename_import(match: re.Match) -> str:
        if match.group(2) != "." or not match.group(3):
            raise ValueError(f"{match.group(0)!r}: only `from .module import` works in a flat remote-code folder.")
        return f"{match.group(1)}.{Path(flat_name(match.group(3) + '.py')).stem}{match.group(4)}"

    sources: dict[str, str] = {}
    for cls in classes.values():
        entry = inspect.getfile(cls)
        for path in [entry, *get_relative_import_files(entry)]:
            text = _RELATIVE_IMPORT.sub(rename_import, Path(path).read_text())
            if sources.setdefault(flat_name(path), text) != text:
                raise ValueError(f"The language model's code holds two different files named {Path(path).name}.")
    auto_map = {key: f"{Path(flat_name(inspect.getfile(cls))).stem}.{cls.__name__}" for key, cls in classes.items()}
    return sources, auto_map


def connector_sources(cls: type[nn.Module], built_in: bool) -> tuple[dict[str, str], str]:
    """The code file of the model's connector class `cls`, flat, and the reference ("file.Class") that the config's
    `connector_config.shipped_class` keeps, so that a saved folder ships the one connector it uses. A connector
    that is not built in must be one self-contained file (torch and transformers imports only)."""
    if built_in:
        return flat_sources([cls]), f"{Path(inspect.getfile(cls)).stem}.{cls.__name__}"
    path = Path(inspect.getfile(cls))
    text = path.read_text()
    foreign = sorted(
        {name for name in get_imports(path) if name not in ("torch", "transformers", *sys.stdlib_module_names)}
    )
    if _RELATIVE_IMPORT.search(text) or foreign:
        raise ValueError(
            f"{path}: a connector saved with the model must be one self-contained file (torch and transformers "
            "imports only), so that it loads where its package is not installed; it imports "
            f"{', '.join(foreign) or 'modules of its own package'}."
        )
    return {path.name: text}, f"{path.stem}.{cls.__name__}"

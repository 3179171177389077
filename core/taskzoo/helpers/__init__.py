"""Helpers for writing tasks, shared by the bundled plugins and open to third parties.

Each module's ``__all__`` is its public API (docs/plugins.md, "Helpers for plugin authors");
anything else in them may change. They sit apart from the kernel (hooks, plugin host, specs, the
task contract, options, the pipeline, the trainer, runs, the CLI), which never needs them to
start: import the module you need (``from taskzoo.helpers.splits import stratified_split``).

- `taskzoo.helpers.hf`: transformers backbones, loaded quietly from package, hub or folder
- `taskzoo.helpers.timm_weights`: timm models from weights shipped in Python packages
- `taskzoo.helpers.tables`: strict reading of users' tables, writing prediction rows
- `taskzoo.helpers.splits`: seeded random and stratified train/validation splits
- `taskzoo.helpers.batching`: length-grouped samplers for text
- `taskzoo.helpers.columns`: memory-mapped Arrow columns for training sets larger than memory
- `taskzoo.helpers.augmentation`: image augmentation seeded per item, so resumed epochs repeat it
- `taskzoo.helpers.plots`: training curves and confusion matrices as PNG files
"""

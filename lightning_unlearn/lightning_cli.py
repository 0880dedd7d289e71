"""A LightningCLI for :class:`~lightning_unlearn.module.CLIPUnlearning` and the data modules.

    python -m lightning_unlearn.lightning_cli validate --config lightning_unlearn/configs/world.yaml
    python -m lightning_unlearn.lightning_cli test --config lightning_unlearn/configs/world.yaml \\
        --model.forget_classes '[heart]' --data.n_per_cell 50
    python -m lightning_unlearn.lightning_cli predict --config lightning_unlearn/configs/world.yaml

``--data`` takes any LightningDataModule, e.g. ``WorldDataModule`` or ``FolderDataModule`` (see
``configs/folder.yaml``). ``--print_config`` shows every option.
"""
from __future__ import annotations

from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningCLI

from .datamodules import FolderDataModule, WorldDataModule  # noqa: F401  (registers the short names)
from .module import CLIPUnlearning


def main(args=None, run: bool = True) -> LightningCLI:
    """Run the CLI (``args``: a list of strings or a dict, as LightningCLI takes; default sys.argv)."""
    return LightningCLI(CLIPUnlearning, LightningDataModule, subclass_mode_data=True, args=args, run=run,
                        save_config_kwargs={"overwrite": True}, auto_configure_optimizers=False)


if __name__ == "__main__":
    main()

"""Data: the procedural world and torch datasets (the world, and ``root/<domain>/<class>/`` image folders)."""
from .datasets import (IMAGE_EXTENSIONS, DomainFolderDataset, WorldDataset, cell_images, default_transform,
                       embed_split, render_split, rendered_batches, write_world)
from .world import CLASSES, COLOUR_NAMES, DOMAINS, QUICK_REQUESTS, World, render

__all__ = ["CLASSES", "COLOUR_NAMES", "DOMAINS", "IMAGE_EXTENSIONS", "QUICK_REQUESTS", "DomainFolderDataset", "World",
           "WorldDataset", "cell_images", "default_transform", "embed_split", "render", "render_split", "rendered_batches",
           "write_world"]

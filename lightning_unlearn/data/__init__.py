"""Data: the procedural world and torch datasets (the world, and ``root/<domain>/<class>/`` image folders)."""
from .datasets import (IMAGE_EXTENSIONS, DomainFolderDataset, WorldDataset, default_transform, rendered_batches,
                       write_world)
from .world import CLASSES, COLOUR_NAMES, DOMAINS, QUICK_REQUESTS, World, render

__all__ = ["CLASSES", "COLOUR_NAMES", "DOMAINS", "IMAGE_EXTENSIONS", "QUICK_REQUESTS", "DomainFolderDataset", "World",
           "WorldDataset", "default_transform", "render", "rendered_batches", "write_world"]

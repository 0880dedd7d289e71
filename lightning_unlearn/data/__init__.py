"""Data: the procedural world and torch datasets (the world, and ``root/<domain>/<class>/`` image folders)."""
from .datasets import IMAGE_EXTENSIONS, DomainFolderDataset, WorldDataset, default_transform, write_world
from .world import CLASSES, COLOUR_NAMES, DOMAINS, World, render

__all__ = ["CLASSES", "COLOUR_NAMES", "DOMAINS", "IMAGE_EXTENSIONS", "DomainFolderDataset", "World", "WorldDataset",
           "default_transform", "render", "write_world"]

"""Where frames come from: folders of images (and later video files, cameras, URLs)."""

from tta_cli.streams.batching import UNLABELED, Batch, Preprocess, batches
from tta_cli.streams.folder import FolderStream, list_images
from tta_cli.streams.frames import Frame, SkipLog

__all__ = ["UNLABELED", "Batch", "FolderStream", "Frame", "Preprocess", "SkipLog", "batches", "list_images"]

"""Where frames come from: folders, globs, video files, cameras and network streams."""

from tta_cli.streams.batching import UNLABELED, Batch, Images, Preprocess, batch_of, batches
from tta_cli.streams.folder import FolderStream, labeled_images, list_images
from tta_cli.streams.frames import EventLog, Frame, SkipLog, Stream
from tta_cli.streams.framing import Framing
from tta_cli.streams.sources import CaptureStream, absolute_source, open_source

__all__ = [
    "UNLABELED",
    "Batch",
    "CaptureStream",
    "EventLog",
    "FolderStream",
    "Frame",
    "Framing",
    "Images",
    "Preprocess",
    "SkipLog",
    "Stream",
    "absolute_source",
    "batch_of",
    "batches",
    "labeled_images",
    "list_images",
    "open_source",
]

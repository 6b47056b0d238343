"""Dataset registry, verified downloads, the parsed-dataset cache and ``load_dataset``."""

from __future__ import annotations

from matcard.datasets.cache import StructureStore, data_dir
from matcard.datasets.dataset import Dataset, load_dataset
from matcard.datasets.download import download_dataset, fetch, is_downloaded, mirror_from_env
from matcard.datasets.registry import REGISTRY, DatasetSpec, RemoteFile, get_spec
from matcard.tasks import Labels, Task

__all__ = [
    "REGISTRY",
    "Dataset",
    "DatasetSpec",
    "Labels",
    "RemoteFile",
    "StructureStore",
    "Task",
    "data_dir",
    "download_dataset",
    "fetch",
    "get_spec",
    "is_downloaded",
    "load_dataset",
    "mirror_from_env",
]

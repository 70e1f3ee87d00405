"""Data layouts read into :class:`SplitFeatures` (a leaf: imports no other gpfuse package but utils)."""

from gpfuse.data.colo_pair import load_colo_pair, read_report_table
from gpfuse.data.cuhk01 import load_cuhk01
from gpfuse.data.features import SplitFeatures, clean_nonfinite, load_features_npz, save_features_npz
from gpfuse.data.market1501 import load_market1501
from gpfuse.data.mosi import load_mosi_folder
from gpfuse.data.reid import ImageTransform, RandomIdentitySampler, ReIDImageDataset, ReIDItem, ReIDSplit
from gpfuse.data.safe_pickle import UnsafePickleError, safe_load_pickle
from gpfuse.data.sentiment_pickles import convert_feature_pickle, load_feature_pickle

__all__ = [
    "ImageTransform",
    "RandomIdentitySampler",
    "ReIDImageDataset",
    "ReIDItem",
    "ReIDSplit",
    "SplitFeatures",
    "UnsafePickleError",
    "clean_nonfinite",
    "convert_feature_pickle",
    "load_colo_pair",
    "load_cuhk01",
    "load_feature_pickle",
    "load_features_npz",
    "load_market1501",
    "load_mosi_folder",
    "read_report_table",
    "safe_load_pickle",
    "save_features_npz",
]

"""Data layouts read into :class:`SplitFeatures` (a leaf: imports no other gpfuse package but utils)."""
from gpfuse.data.features import SplitFeatures, clean_nonfinite, load_features_npz, save_features_npz
from gpfuse.data.mosi import load_mosi_folder
from gpfuse.data.safe_pickle import UnsafePickleError, safe_load_pickle
from gpfuse.data.sentiment_pickles import convert_feature_pickle, load_feature_pickle

__all__ = ["SplitFeatures", "clean_nonfinite", "load_features_npz", "save_features_npz", "load_mosi_folder",
           "UnsafePickleError", "safe_load_pickle", "convert_feature_pickle", "load_feature_pickle"]

"""Patient groups for datasets that lost their patient ids: slice runs and near-duplicate images.

Splits keep each ``Record.patient_id`` on one side (see :mod:`mtl.data.splits`), so a held-out
score is only honest if items of one patient, or copies of one image, share a ``patient_id``.
Two datasets here need the groups guessed from the data, each by its own algorithm:

- :mod:`~mtl.data.grouping.slice_runs`: runs of slices (figshare JPEG layout), ids numbered
  patient by patient, cut where the tumor box jumps and the images differ (:func:`patient_blocks`);
- :mod:`~mtl.data.grouping.near_duplicates`: copies of one image (Br35H), linked by perceptual
  hashes checked by thumbnail correlation and joined as connected components
  (:func:`duplicate_groups`);
- :mod:`~mtl.data.grouping.features`: what both read, the perceptual hashes and thumbnails of
  each image, cached under ``$MTL_CACHE_DIR`` (default ``~/.cache/mtl``) (:func:`image_features`).
"""

from mtl.data.grouping.features import (
    CACHE_ENV,
    FeatureRow,
    ImageFeatures,
    cache_dir,
    features_of_gray,
    head_crop,
    image_features,
    stack_features,
    unreadable_features,
)
from mtl.data.grouping.near_duplicates import duplicate_groups, duplicate_pairs, group_labels
from mtl.data.grouping.slice_runs import (
    DEFAULT_TARGET_SIZE,
    StraddleEstimate,
    box_jumps,
    consecutive_similarity,
    estimate_straddles,
    fixed_blocks,
    forced_cuts,
    patient_blocks,
)

__all__ = [
    "CACHE_ENV", "DEFAULT_TARGET_SIZE", "FeatureRow", "ImageFeatures", "StraddleEstimate",
    "box_jumps", "cache_dir", "consecutive_similarity", "duplicate_groups", "duplicate_pairs",
    "estimate_straddles", "features_of_gray", "fixed_blocks", "forced_cuts", "group_labels",
    "head_crop", "image_features", "patient_blocks", "stack_features", "unreadable_features",
]

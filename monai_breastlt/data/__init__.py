from __future__ import annotations

from .datalist import (
    IMAGE_EXTENSIONS,
    SECTIONS,
    check_classes,
    deduplicate_by_hash,
    inference_items,
    is_image_file,
    load_datalist,
    load_datalist_file,
    load_items_for_classes,
    load_mixed_datalist,
    load_pool_items,
    load_training_data,
    merge_rare_classes,
    read_csv_datalist,
    scan_class_folder,
    validate_items,
    write_csv_datalist,
    write_datalist,
)
from .checks import check_datalist, check_image_files, find_leakage, inspect_image, warn_leakage
from .phantom import DEFAULT_SUBTYPES, LesionSubtype, generate_phantom, long_tail_counts, render_phantom
from .sampler import AdaptiveRatioSampler
from .profile import LongTailProfile, long_tail_groups, long_tail_profile, tempered_class_weights
from .dicom import expand_dicom_frames
from .public import read_any_source, read_busbra, read_busi
from .split import long_tail_subsample, prepare_benchmark_data, prepare_split, stratified_group_split

"""Compatibility: the UFO arch-string parser and predictor features now live in
snrt.variants.ufo_arch (beside the elastic-subnet variant space, snrt.variants.subnets)."""

from .variants.ufo_arch import (  # noqa: F401
    STRUCTURE_FEATURES,
    UFO_TASKS,
    UFO_VIT_B,
    ElasticSubnet,
    SubnetSpace,
    UfoRankData,
    __all__,
    encode_gpnas,
    encode_onehot,
    read_ufo_ranks,
    structure_features,
)

"""Shared network building blocks: teachers, bottlenecks, reversed decoders, maps."""
from kdsearch.nn.backbones import (
    FrozenTeacher,
    bottleneck_width_factor,
    create_backbone,
    residual_block_kind,
    stage_depths,
)
from kdsearch.nn.blocks import ResidualBlock, conv_bn_relu, residual_stage
from kdsearch.nn.bottleneck import OneClassBottleneck
from kdsearch.nn.decoder import ReverseDecoder
from kdsearch.nn.init import resnet_init_
from kdsearch.nn.maps import (
    cosine_distance_map,
    flattened_cosine_loss,
    full_precision,
    gaussian_blur,
    top_k_mean,
    upsample_maps,
)

__all__ = [
    "FrozenTeacher", "bottleneck_width_factor", "create_backbone", "residual_block_kind", "stage_depths",
    "ResidualBlock", "conv_bn_relu", "residual_stage", "OneClassBottleneck", "ReverseDecoder", "resnet_init_",
    "cosine_distance_map", "flattened_cosine_loss", "full_precision", "gaussian_blur", "top_k_mean", "upsample_maps",
]

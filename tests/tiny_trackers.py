"""Tiny random SAM 2, SAM 3 tracker and EdgeTAM checkpoints for the tracker tests.

Built with transformers' own classes and random weights, saved with ``save_pretrained``
like real checkpoints (nothing is downloaded). Random weights track nothing in particular:
the tests check contracts, not quality.
"""

from __future__ import annotations

from pathlib import Path


def tiny_sam2(folder: Path) -> Path:
    """A SAM 2 video model with random weights and a 128 px input, saved like a checkpoint."""
    import torch
    from transformers import (
        Sam2ImageProcessor,
        Sam2VideoConfig,
        Sam2VideoModel,
        Sam2VideoProcessor,
        Sam2VideoVideoProcessor,
    )

    s, hidden = 128, 128
    vision = _hiera(s, hidden)
    config = Sam2VideoConfig(
        vision_config=vision,
        prompt_encoder_config={"hidden_size": hidden, "image_size": s, "patch_size": 16},
        mask_decoder_config={
            "hidden_size": hidden,
            "mlp_dim": 64,
            "num_attention_heads": 2,
            "iou_head_hidden_dim": 32,
        },
        image_size=s,
        num_maskmem=3,
        max_object_pointers_in_encoder=4,
        memory_attention_hidden_size=hidden,
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=64,
        memory_attention_rope_feat_sizes=[s // 16, s // 16],
        memory_encoder_hidden_size=hidden,
        memory_encoder_output_channels=64,  # the memory attention's key/value width is fixed
        mask_downsampler_embed_dim=hidden,
        memory_fuser_embed_dim=hidden,
        memory_fuser_intermediate_dim=64,
    )
    torch.manual_seed(0)
    Sam2VideoModel(config).eval().save_pretrained(folder)
    size = {"height": s, "width": s}
    Sam2VideoProcessor(
        image_processor=Sam2ImageProcessor(size=size),
        video_processor=Sam2VideoVideoProcessor(size=size),
    ).save_pretrained(folder)
    return folder


def tiny_sam3(folder: Path) -> Path:
    """SAM 3's tracker with random weights, a 112 px input and a 2-layer ViT."""
    import torch
    from transformers import (
        Sam2VideoVideoProcessor,
        Sam3ImageProcessor,
        Sam3TrackerVideoConfig,
        Sam3TrackerVideoModel,
        Sam3TrackerVideoProcessor,
    )
    from transformers.models.sam3.configuration_sam3 import Sam3VisionConfig, Sam3ViTConfig

    s, patch, hidden = 112, 14, 128
    grid = s // patch
    vit = Sam3ViTConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=s,
        patch_size=patch,
        window_size=4,
        global_attn_indexes=[1],
        pretrain_image_size=s,
    )
    vision = Sam3VisionConfig(
        backbone_config=vit,
        fpn_hidden_size=hidden,
        backbone_feature_sizes=[[4 * grid] * 2, [2 * grid] * 2, [grid] * 2],
    )
    config = Sam3TrackerVideoConfig(
        vision_config=vision,
        prompt_encoder_config={"hidden_size": hidden, "image_size": s, "patch_size": patch},
        mask_decoder_config=MASK_DECODER,
        image_size=s,
        num_maskmem=3,
        max_object_pointers_in_encoder=4,
        memory_attention_hidden_size=hidden,
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=64,
        **MEMORY,
    )
    torch.manual_seed(0)
    sees_the_object(Sam3TrackerVideoModel(config)).save_pretrained(folder)
    size = {"height": s, "width": s}
    Sam3TrackerVideoProcessor(
        image_processor=Sam3ImageProcessor(
            size=size, mask_size={"height": s // 4, "width": s // 4}
        ),
        video_processor=Sam2VideoVideoProcessor(size=size),
    ).save_pretrained(folder)
    return folder


def tiny_edgetam(folder: Path) -> Path:
    """EdgeTAM with random weights, a 128 px input, a small Hiera and a small perceiver."""
    import torch
    from transformers import (
        EdgeTamVideoConfig,
        EdgeTamVideoModel,
        Sam2ImageProcessor,
        Sam2VideoProcessor,
        Sam2VideoVideoProcessor,
    )

    s, hidden = 128, 128
    vision = _hiera(s, hidden)
    config = EdgeTamVideoConfig(
        vision_config=vision,
        prompt_encoder_config={"hidden_size": hidden, "image_size": s, "patch_size": 16},
        mask_decoder_config=MASK_DECODER,
        image_size=s,
        num_maskmem=3,
        max_object_pointers_in_encoder=4,
        memory_attention_hidden_size=hidden,
        memory_attention_num_layers=1,
        memory_attention_mlp_hidden_size=64,
        memory_attention_rope_feat_sizes=[s // 16, s // 16],
        memory_attention_rope_k_sizes=[4, 4],
        perceiver_resampler_num_latents=16,
        perceiver_resampler_num_latents_2d=16,
        perceiver_resampler_hidden_size=64,
        perceiver_resampler_mlp_intermediate_size=64,
        perceiver_resampler_attention_head_dim=64,  # one head as wide as the resampler
        perceiver_resampler_num_layers=1,
        **MEMORY,
    )
    torch.manual_seed(0)
    sees_the_object(EdgeTamVideoModel(config)).save_pretrained(folder)
    size = {"height": s, "width": s}
    Sam2VideoProcessor(  # EdgeTAM's checkpoints name SAM 2's processor
        image_processor=Sam2ImageProcessor(size=size),
        video_processor=Sam2VideoVideoProcessor(size=size),
    ).save_pretrained(folder)
    return folder


def sees_the_object(model):  # noqa: ANN001, ANN202
    """Bias the object-score head to "present": a random head may say "no object" on every
    frame, and the worker rightly refuses a track lost everywhere but the keyframe."""
    import torch

    with torch.no_grad():
        model.mask_decoder.pred_obj_score_head.proj_out.bias.fill_(8.0)
    return model.eval()


MASK_DECODER = {
    "hidden_size": 128,
    "mlp_dim": 64,
    "num_attention_heads": 2,
    "iou_head_hidden_dim": 32,
}
MEMORY = {
    "memory_encoder_hidden_size": 128,
    "memory_encoder_output_channels": 64,  # narrower than the features, as in the checkpoints
    "mask_downsampler_embed_dim": 128,
    "memory_fuser_embed_dim": 128,
    "memory_fuser_intermediate_dim": 64,
}
BUILDERS = {"sam2": tiny_sam2, "sam3": tiny_sam3, "edgetam": tiny_edgetam}


def _hiera(s: int, hidden: int):  # noqa: ANN202
    """A tiny Hiera image encoder config (SAM 2's, also EdgeTAM's) for ``s`` px input."""
    from transformers.models.sam2.configuration_sam2 import Sam2HieraDetConfig, Sam2VisionConfig

    backbone = Sam2HieraDetConfig(
        hidden_size=8,
        image_size=[s, s],
        blocks_per_stage=[1, 1, 2, 1],
        embed_dim_per_stage=[8, 16, 32, 64],
        num_attention_heads_per_stage=[1, 1, 1, 1],
        window_size_per_stage=[4, 4, 4, 4],
        global_attention_blocks=[3],
        window_positional_embedding_background_size=[2, 2],
    )
    return Sam2VisionConfig(
        backbone_config=backbone,
        backbone_channel_list=[64, 32, 16, 8],
        backbone_feature_sizes=[[s // 4, s // 4], [s // 8, s // 8], [s // 16, s // 16]],
        fpn_hidden_size=hidden,
    )

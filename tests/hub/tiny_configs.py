"""Tiny configs of the released architectures, shared by the hub tests and the push/pull client script."""

TINY_3D = dict(
    image_size=32,
    patch_size=16,
    embed_dim=32,
    depth=2,
    num_heads=2,
    window_size=3,
    global_attn_indexes=(1,),
    prompt_embed_dim=24,
    decoder_num_heads=2,
    decoder_mlp_dim=32,
    iou_head_hidden_dim=16,
)

TINY_2D = dict(
    image_size=64,
    patch_size=16,
    embed_dim=32,
    depth=2,
    num_heads=2,
    window_size=3,
    global_attn_indexes=(1,),
    prompt_embed_dim=16,
    decoder_num_heads=2,
    decoder_mlp_dim=32,
    iou_head_hidden_dim=16,
)

#: A tiny "SAM ViT-B" at twice TINY_2D's input: position grid 8x8 (vs 4x4), global rel-pos 15 rows (vs 7).
TINY_SAM = dict(TINY_2D, image_size=128)

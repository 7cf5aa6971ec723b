"""Pretraining: the shared ViT encoder, the maskers, SSAST and Audio-MAE, and the DeepSpeed loop.

Modules (imported explicitly; this package imports nothing eagerly):
    encoder      EncoderConfig / Encoder: patch embed, learned or sin-cos pos (+ SSAST adaptation), SDPA blocks
    masking      pure maskers taking a torch.Generator (SSAST clustered / uniform, MAE random / 2-D)
    ssast        SSASTConfig / SSAST: mask_embed, cpredlayer / gpredlayer, InfoNCE + MSE
    audiomae     AudioMAEConfig / AudioMAE: decoder and norm-pix loss
    checkpoints  official SSAST / Audio-MAE weight import
    config, engine, train, checkpoint, distributed: the typed config tree and the loop
"""

"""Pretraining objectives, each a small pure function (open_clip's habit: losses apart from models)."""
from .contrastive import (CLIP_INIT_TEMPERATURE, CLIP_MAX_LOGIT_SCALE, LogitScale, clip_loss, convirt_loss,
                          nt_xent_loss, similarity_logits)

__all__ = ["CLIP_INIT_TEMPERATURE", "CLIP_MAX_LOGIT_SCALE", "LogitScale", "clip_loss", "convirt_loss",
           "nt_xent_loss", "similarity_logits"]

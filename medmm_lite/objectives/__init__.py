"""Pretraining objectives, each a small pure function (open_clip's habit: losses apart from models)."""
from .contrastive import (CLIP_INIT_TEMPERATURE, CLIP_MAX_LOGIT_SCALE, LogitScale, clip_loss, convirt_loss,
                          distributed_clip_loss, distributed_nt_xent_loss, gather_features, nt_xent_loss,
                          similarity_logits)
from .masking import mae_loss, random_masking, unshuffle
from .mlm import mask_tokens, mlm_loss, word_type_ids, wordpiece_word_ids
from .local import (GLORIA_ATTENTION_TEMPERATURE, GLORIA_LOGIT_SCALE, GLORIA_SIMILARITY_TEMPERATURE,
                    LocalAlignment, local_contrastive_loss, local_similarities, merge_subwords, merged_words,
                    word_region_attention)

__all__ = ["CLIP_INIT_TEMPERATURE", "CLIP_MAX_LOGIT_SCALE", "LogitScale", "clip_loss", "convirt_loss",
           "nt_xent_loss", "similarity_logits", "word_type_ids", "distributed_clip_loss", "distributed_nt_xent_loss", "gather_features",
           "random_masking", "mae_loss", "unshuffle", "mask_tokens", "mlm_loss", "wordpiece_word_ids",
           "merge_subwords", "merged_words", "word_region_attention", "local_similarities", "local_contrastive_loss",
           "LocalAlignment", "GLORIA_ATTENTION_TEMPERATURE", "GLORIA_SIMILARITY_TEMPERATURE", "GLORIA_LOGIT_SCALE"]

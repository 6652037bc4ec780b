"""Generative VLM (lesson 07): the LLaVA recipe from scratch on SynthCXR.

    from medmm_lite import vlm
    model, info = vlm.pretrain_vlm(P, data, seed=SEED)          # cached; stage=1 for projector-only
    scores = vlm.classify_by_instruction(model, images)         # (N, 10) p(yes) per finding

The two entry points other lessons use (stable signatures):

* ``pretrain_vlm(P, data, *, seed=0, stage=2, device=None, progress=True, **options) -> (model, info)``:
  CLIP's ViT (lesson 02's cached ``pretrain_clip``) as the frozen vision encoder, a small
  ``LlamaForCausalLM`` pretrained on the training reports, stage 1 (projector only) and stage 2
  (projector + LM on instruction conversations; ``lora_rank=r`` for LoRA), each phase cached through
  ``medmm_lite.hub.load_or_train``. Options: ``lm_steps``, ``stage1_steps``, ``stage2_steps``,
  ``batch_size``, ``lr``, ``image_grid``, ``projector`` ("mlp"/"linear"), ``lora_rank``, ``lora_alpha``,
  ``max_turns``, ``retrain``, ``sizes``. ``model.tokenizer`` is its tokenizer.
* ``classify_by_instruction(model, images, findings=FINDINGS, batch_size=256, image_features=None)
  -> np.ndarray (N, len(findings))``: for each finding the score p("yes") / (p("yes") + p("no")) of
  the answer's first token after the closed question "is there <finding>?" ("is this a normal
  study?" for No Finding).

Modules: ``instructions`` (questions, conversations, chat template, label masking),
``language_model`` (HF config -> model, report pretraining, ``from_pretrained``), ``model``
(projector, ``<image>`` splicing, generation with the KV cache), ``train`` (the stages),
``evaluate`` (VQA metrics, instruction classification, chat).
"""
from .evaluate import ask, answerer, chat, classify_by_instruction, evaluate_vqa, majority_answers, mean_boxes
from .instructions import (ASSISTANT_TOKEN, IGNORE_INDEX, IMAGE_TOKEN, QUESTION_KINDS, USER_TOKEN, box_iou,
                           box_to_text, build_conversations, encode_conversation, encode_plain, generate_questions,
                           parse_box, render_chat, sample_eval_questions, vlm_tokenizer)
from .language_model import build_language_model, from_pretrained, lm_config, pretrain_language_model
from .model import (Projector, VisionLanguageModel, batched_image_features, generate, next_token_logits,
                    splice_image_tokens, vlm_step)
from .train import build_vlm, pretrain_vlm

__all__ = ["pretrain_vlm", "classify_by_instruction", "build_vlm", "VisionLanguageModel", "Projector",
           "splice_image_tokens", "vlm_step", "generate", "next_token_logits", "batched_image_features",
           "lm_config", "build_language_model", "from_pretrained", "pretrain_language_model", "vlm_tokenizer",
           "generate_questions", "build_conversations", "sample_eval_questions", "encode_conversation",
           "encode_plain", "render_chat", "box_to_text", "parse_box", "box_iou", "IGNORE_INDEX", "IMAGE_TOKEN",
           "USER_TOKEN", "ASSISTANT_TOKEN", "QUESTION_KINDS", "ask", "chat", "answerer",
           "evaluate_vqa", "majority_answers", "mean_boxes"]

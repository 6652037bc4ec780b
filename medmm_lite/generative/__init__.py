"""Generative image models for lesson 06: report -> image and image -> image.

* ``unet``: the small U-Net both use (sinusoidal time embedding + MLP, conditioning added
  to every residual block; optional attention at the lowest resolution).
* ``diffusion``: DDPM noise schedules, forward noising in closed form, the noise-prediction
  loss, classifier-free guidance (condition dropout, learned null condition), DDIM and
  ancestral sampling, and the cached recipe ``train_ddpm``.
* ``translation``: MRI T1 -> T2/FLAIR with an L1 U-Net or pix2pix (PatchGAN + 100 * L1),
  and the cached recipe ``train_translation``.
"""
from .diffusion import (CONDITIONS, SCHEDULES, ConditionalDenoiser, FindingEmbedding, NoiseSchedule, ReportEmbedding,
                        build_denoiser, check_guidance, ddim_step, diffusion_loss, drop_condition,
                        findings_from_reports, from_model_range, guided_eps, predict_x0, q_sample, q_step,
                        resize_images, sample, sampling_timesteps, to_model_range, train_ddpm)
from .translation import (PIX2PIX_L1_WEIGHT, PatchDiscriminator, Pix2Pix, TranslationUNet, build_translation,
                          evaluate_translation, identity_baseline, pix2pix_discriminator_loss,
                          pix2pix_generator_loss, train_translation, translate, translation_loss)
from .unet import ResBlock, SelfAttention2d, UNet, timestep_embedding

__all__ = ["UNet", "ResBlock", "SelfAttention2d", "timestep_embedding",
           "NoiseSchedule", "SCHEDULES", "CONDITIONS", "q_sample", "q_step", "predict_x0", "diffusion_loss",
           "drop_condition", "ConditionalDenoiser", "FindingEmbedding", "ReportEmbedding", "build_denoiser",
           "check_guidance", "guided_eps", "sampling_timesteps", "ddim_step", "sample", "to_model_range",
           "from_model_range", "resize_images", "findings_from_reports", "train_ddpm",
           "TranslationUNet", "PatchDiscriminator", "Pix2Pix", "PIX2PIX_L1_WEIGHT", "pix2pix_generator_loss",
           "pix2pix_discriminator_loss", "translation_loss", "identity_baseline", "translate",
           "evaluate_translation", "build_translation", "train_translation"]

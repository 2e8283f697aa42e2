"""Fine-tuners of the denoiser (DESIGN.md section 6).

- :func:`distill_guidance` / :func:`finetune_on_samples`: guidance distillation, a
  denoiser whose unguided samples follow posterior-guided ones, anchored to the base
  model;
- :func:`papa_finetune`: PAPA's signed-ELBO update from like/dislike labels with its
  base-model regulariser and EPAPA's timestep cut-off, the baseline;
- :func:`save_finetuned` / :func:`load_finetuned`: checkpoints (``save_pretrained``).

Full fine-tuning for the small digits model; LoRA adapters through ``peft`` for large
ones (``lora_rank=``). CUDA with bf16 autocast when the model is there, CPU otherwise.

Example:
    >>> distilled = distill_guidance(base, Guidance(objective, scale=0.3), steps=600,
    ...                              generator=torch.Generator().manual_seed(0))
    >>> save_finetuned(distilled, "out/distilled")
    >>> images = sample(load_finetuned("out/distilled"), 256).images
"""

from papa_bayes.diffusion.finetune.common import DEFAULT_LORA_TARGETS
from papa_bayes.diffusion.finetune.distill import distill_guidance, finetune_on_samples
from papa_bayes.diffusion.finetune.io import load_finetuned, save_finetuned
from papa_bayes.diffusion.finetune.papa import papa_finetune

__all__ = [
    "DEFAULT_LORA_TARGETS",
    "distill_guidance",
    "finetune_on_samples",
    "papa_finetune",
    "save_finetuned",
    "load_finetuned",
]

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
    Distill guidance toward a simulated person's true utility (any objective works;
    :func:`distill_guidance` shows a posterior's), save the result and load it back:

    >>> import tempfile
    >>> import torch
    >>> from papa_bayes.diffusion import (DigitsPerson, Guidance, distill_guidance, load_base_model,
    ...                                   load_finetuned, sample, save_finetuned)
    >>> base = load_base_model()
    >>> distilled = distill_guidance(base, Guidance(DigitsPerson().utility, scale=0.3),
    ...                              num_samples=16, num_inference_steps=10,  # 512 and 50 by default
    ...                              steps=3,  # 300 by default; 3 keeps this example fast
    ...                              progress_bar=False, generator=torch.Generator().manual_seed(0))
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = save_finetuned(distilled, f"{folder}/distilled")
    ...     loaded = load_finetuned(path)
    >>> all(torch.equal(a, b) for a, b in zip(loaded.unet.parameters(), distilled.unet.parameters()))
    True
    >>> images = sample(loaded, 16, num_inference_steps=10, progress_bar=False,
    ...                 generator=torch.Generator().manual_seed(1)).images  # unguided
    >>> images.shape
    torch.Size([16, 1, 8, 8])
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

"""Diffusion: the base model, feature maps, posterior-guided sampling, measurement.

The only subpackage of papa_bayes that imports diffusers (DESIGN.md section 6).

Example:
    Sample the base model, let a simulated person rate the samples, fit a reward
    posterior to the ratings and steer new samples toward its preferred region
    (``num_inference_steps`` is 50 by default; 10 keeps this example fast):

    >>> import torch
    >>> from papa_bayes import LinearReward, PreferenceData, fit
    >>> from papa_bayes.diffusion import (DigitsPerson, Guidance, PosteriorObjective, load_base_model,
    ...                                   load_feature_map, sample)
    >>> model, phi = load_base_model(), load_feature_map()
    >>> base_images = sample(model, 32, num_inference_steps=10, progress_bar=False,
    ...                      generator=torch.Generator().manual_seed(0)).images
    >>> ratings = torch.stack([torch.arange(32), DigitsPerson().rate(base_images)], dim=1)  # (item, +1/-1)
    >>> data = PreferenceData(items=phi(base_images), ratings=ratings)
    >>> posterior = fit(LinearReward(), data, method="laplace", seed=0)
    >>> objective = PosteriorObjective(posterior, phi, kind="region").calibrate(base_images)
    >>> out = sample(model, 16, num_inference_steps=10, guidance=Guidance(objective, scale=0.5),
    ...              progress_bar=False, generator=torch.Generator().manual_seed(1))
    >>> out.images.shape
    torch.Size([16, 1, 8, 8])
"""

from papa_bayes.diffusion.base import (
    DEFAULT_CHECKPOINT,
    DIGITS_SCHEDULER_CONFIG,
    DIGITS_UNET_CONFIG,
    load_base_model,
    make_digits_unet,
    make_sampling_scheduler,
    make_train_scheduler,
)
from papa_bayes.diffusion.candidates import DiffusionCandidates
from papa_bayes.diffusion.classifiers import DEFAULT_LIKED, DigitsJudge, DigitsPerson, load_judge, load_user_classifier
from papa_bayes.diffusion.digits import DIGITS_SPLIT_SEED, DigitsSplit, DigitsSplits, load_digits_splits
from papa_bayes.diffusion.features import (
    CallableFeatures,
    ConcatFeatures,
    FeatureMap,
    MidBlockFeatures,
    PCAFeatures,
    load_feature_map,
    save_feature_map,
)
from papa_bayes.diffusion.grid import image_grid, save_image_grid
from papa_bayes.diffusion.guidance import SCHEDULES, Guidance
from papa_bayes.diffusion.metrics import (
    class_entropy,
    evaluate_samples,
    knn_radii,
    manifold_membership,
    manifold_precision,
    manifold_recall,
)
from papa_bayes.diffusion.models import DiffusionModel, LatentDiffusion, PixelDiffusion
from papa_bayes.diffusion.objectives import OBJECTIVES, PosteriorObjective
from papa_bayes.diffusion.sampler import SamplerOutput, sample
from papa_bayes.diffusion.scale import (
    DEFAULT_SCALES,
    RecommendationScale,
    ScaleSelection,
    select_guidance_scale,
    select_recommendation_scale,
)
from papa_bayes.diffusion.selection import ManifoldGuard, PreferredSamples, sample_preferred, select_preferred

__all__ = [
    # base model and data
    "DEFAULT_CHECKPOINT",
    "DIGITS_UNET_CONFIG",
    "DIGITS_SCHEDULER_CONFIG",
    "DIGITS_SPLIT_SEED",
    "load_base_model",
    "make_digits_unet",
    "make_train_scheduler",
    "make_sampling_scheduler",
    "DigitsSplit",
    "DigitsSplits",
    "load_digits_splits",
    # models and sampling
    "DiffusionModel",
    "PixelDiffusion",
    "LatentDiffusion",
    "SamplerOutput",
    "sample",
    # features
    "FeatureMap",
    "PCAFeatures",
    "MidBlockFeatures",
    "CallableFeatures",
    "ConcatFeatures",
    "save_feature_map",
    "load_feature_map",
    # guidance
    "Guidance",
    "SCHEDULES",
    "OBJECTIVES",
    "PosteriorObjective",
    "ManifoldGuard",
    "PreferredSamples",
    "select_preferred",
    "sample_preferred",
    "DEFAULT_SCALES",
    "ScaleSelection",
    "select_guidance_scale",
    "RecommendationScale",
    "select_recommendation_scale",
    # candidates of a PreferenceSession: base samples first, steered pools as answers come
    "DiffusionCandidates",
    # the digits task: person, judge, metrics
    "DEFAULT_LIKED",
    "DigitsPerson",
    "DigitsJudge",
    "load_judge",
    "load_user_classifier",
    "evaluate_samples",
    "manifold_precision",
    "manifold_recall",
    "manifold_membership",
    "knn_radii",
    "class_entropy",
    # pictures
    "image_grid",
    "save_image_grid",
]

# -- fine-tuners (papa_bayes.diffusion.finetune) -------------------------------
from papa_bayes.diffusion.finetune import (  # noqa: E402
    DEFAULT_LORA_TARGETS,
    distill_guidance,
    finetune_on_samples,
    load_finetuned,
    papa_finetune,
    save_finetuned,
)

__all__ += [
    "DEFAULT_LORA_TARGETS",
    "distill_guidance",
    "finetune_on_samples",
    "papa_finetune",
    "save_finetuned",
    "load_finetuned",
]

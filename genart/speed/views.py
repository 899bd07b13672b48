"""The guard of `genart.cutouts.transform_chosen`, which runs a kornia augmentation on the views
its coin flips chose only, replaying kornia's parameters and writing them back to `_params`."""

from __future__ import annotations

from genart.speed.guard import Patch, first_difference, parameters_differ

PER_BATCH = {"batch_prob", "forward_input_shape"}  # keys transform_chosen reads or rewrites


def augmentation_internals() -> str | None:
    """Why kornia's augmentations do not draw, replay and keep parameters as transform_chosen
    expects (forward_parameters(shape) → dict; forward(input, params); `_params`), or None."""
    import torch
    from kornia.augmentation import RandomAffine
    from kornia.augmentation.base import _BasicAugmentationBase as Base

    module = RandomAffine(15, p=0.5)
    with torch.random.fork_rng(devices=[]):  # the check leaves the seeded draws alone
        keys = set(module.forward_parameters((2, 3, 4, 4)))
    return first_difference(
        parameters_differ(Base.forward_parameters, "self", "batch_shape"),
        parameters_differ(Base.forward, "self", "input", "params", "kwargs"),
        None if hasattr(module, "_params") else "augmentations keep no _params",
        None if PER_BATCH <= keys else f"forward_parameters returns {sorted(keys)}",
    )


CHOSEN_VIEWS = Patch(
    "chosen_views",
    "kornia",
    ">=0.7.2,<0.10",  # the parameter dict's layout through 0.9; 0.x minors may change it
    "augmenting only the views kornia chose (genart.cutouts.transform_chosen)",
    augmentation_internals,
)

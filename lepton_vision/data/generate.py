"""The embedded default data: generate a dataset card's synthetic data the first time it is used.

CT phantoms (written as real DICOM, NIfTI or DICOM series) and street/road scenes (COCO JSON) come
from :mod:`lepton_vision.data.synthetic`; a dataset is complete when the file its generator
writes last exists, so an interrupted generation starts again.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from lepton_vision.config.cards import DatasetCard, dataset_dir
from lepton_vision.config.errors import RecipeError
from lepton_vision.console import console


def ensure_generated(card: DatasetCard, card_path: Path, force: bool = False, progress: bool = True) -> Path:
    """Generate a synthetic dataset if it is missing (its labels.csv is written last).

    Returns:
        The dataset folder.
    """
    out = dataset_dir(card, card_path)
    if card.synthetic is None:
        raise RecipeError(
            f"dataset '{card.name}' is not generated (no synthetic: section in {card_path})",
            hint="Only generated datasets can be made with `data synth`; point LEPTON_DATA_ROOT at real data instead.",
        )
    done = out / (card.annotations or card.manifest or "labels.csv")  # written last by the generators
    if done.is_file() and not force:
        return out
    if force and out.exists():
        shutil.rmtree(out)
    console().print(f"generating {card.name} into {out} (seed {card.synthetic.seed}) ...")
    if card.synthetic.generator != "ct_phantom":
        from lepton_vision.data.synthetic.scenes import generate_scene_dataset

        summary = generate_scene_dataset(out, card.synthetic, progress=progress)
        console().print(
            f"  {summary['n_images']} frames, {summary['n_boxes']} boxes, {summary['n_empty']} empty, "
            f"{summary['n_groups']} sequences in {summary['seconds']:.1f} s"
        )
        return out
    from lepton_vision.data.synthetic.ct import generate_ct_dataset

    summary = generate_ct_dataset(out, card.synthetic, progress=progress)
    console().print(
        f"  {summary['n_slices']} slices, {summary['n_abnormal_slices']} abnormal, "
        f"{summary['n_patients']} patients in {summary['seconds']:.1f} s"
    )
    return out


def generator_classes(generator: str) -> tuple[str, ...]:
    """Class names a synthetic generator labels, in class-index order."""
    if generator == "ct_phantom":
        return ("normal", "abnormal")
    from lepton_vision.data.synthetic.scenes import CLASSES

    return CLASSES[generator]

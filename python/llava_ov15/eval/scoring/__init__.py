"""Pure scoring functions: ``score_x(docs, predictions) -> dict``.

Each returns ``{"metrics": {name: float}, "breakdowns": {name: {key: float}},
"per_sample": [float, ...], "notes": [str, ...]?}``; docs are the dataset rows (dicts with the
lmms-lab column names, images not needed) and predictions the model's stripped answers.
"""

from .anls import score_anls
from .coco import score_coco
from .exact import score_ai2d, score_gqa, score_scienceqa
from .mmbench import score_mmbench
from .mme import score_mme
from .mmmu import score_mmmu
from .ocrbench import score_ocrbench
from .pope import score_pope
from .relaxed import score_chartqa
from .vqa import score_textvqa, score_vqav2

__all__ = ["score_ai2d", "score_anls", "score_chartqa", "score_coco", "score_gqa",
           "score_mmbench", "score_mme", "score_mmmu", "score_ocrbench", "score_pope",
           "score_scienceqa", "score_textvqa", "score_vqav2"]

"""Model code shared by the reward plugins: one implementation of each piece.

* :mod:`r0kit.backbones.common`: lazy imports that name the extra to install,
  ``dtype`` / ``device`` options, freezing, the per-prompt text cache, and
  gradient checkpointing of a stack of layers.
* :mod:`r0kit.backbones.openclip`: open_clip models (CLIP score and HPS v2/2.1),
  their weight resolution and the cosine-similarity score.
* :mod:`r0kit.backbones.hf_clip`: transformers ``CLIPModel`` towers (PickScore,
  the CLIP ViT-L/14 image embeddings of the LAION aesthetic predictor).
* :mod:`r0kit.backbones.blip`: the BLIP ViT and the cross-attention BERT of
  ImageReward, written against the upstream checkpoint layout.
* :mod:`r0kit.backbones.heads`: the MLP score head shared by ImageReward and
  the aesthetic predictor.

The core never imports a plugin; plugins import these modules. Importing this
package imports no optional dependency: open_clip and transformers are
imported inside the functions that need them.
"""

from r0kit.backbones.common import (
    MissingDependencyError,
    PromptCache,
    enable_layer_checkpointing,
    freeze,
    require,
    resolve_device,
    resolve_dtype,
)

__all__ = [
    "MissingDependencyError",
    "PromptCache",
    "enable_layer_checkpointing",
    "freeze",
    "require",
    "resolve_device",
    "resolve_dtype",
]

"""Publishing weights: checkpoint conversion, timm Hub-format export with a model card, upload to the Hub.

Not imported by ``import timm_rspc``; the ``convert`` / ``export`` / ``push`` commands are thin wrappers over:

* `convert_checkpoint`: training checkpoint -> validated safetensors state dict + SHA-256 record;
* `export_model`: model + weights -> folder loadable by ``timm.create_model('local-dir:...')`` / ``'hf-hub:...'``;
* `build_model_card`: the folder's ``README.md``;
* `push_folder` / `push_model`: upload through ``huggingface_hub``;
* `released_weights` / `export_all_released`: the authors' release files, as listed by the model registry.
"""
from .convert import convert_checkpoint, model_from_checkpoint, sha256_file
from .export import EXPORT_FILES, MANIFEST_NAME, export_model, prepare_model, read_manifest
from .export_released import export_all_released
from .model_card import build_model_card, model_stats, published_results, read_results, results_table
from .push import CardExistsError, push_folder, push_model, upload_plan
from .released import ReleasedWeight, release_of, released_weights

"""Recipe sections of the later stages: ``posttrain``, ``quantize``, ``evaluate`` and ``deploy``.

They live here until each stage's library exists; then they move next to it (as ``DataConfig`` lives in
``herd.data.config``) and this module re-exports them. Defaults are the ``tiny`` recipe's values: a 2-core
laptop finishes each stage in minutes. Each library function receives only its own section.

    from herd.platform.sections import QuantizeConfig
    QuantizeConfig(schemes=[{"scheme": "int4", "group_size": 32}])
"""

from __future__ import annotations

# --------------------------------------------------------------------------------------------- evaluate
# moved to herd.eval.config (its library); re-exported here for existing imports
from herd.eval.config import EvaluateConfig, NeedleConfig

# --------------------------------------------------------------------------------------------- posttrain
# moved to herd.posttrain.config (the library owns its section); re-exported here for the Recipe
from herd.posttrain.config import DPOConfig, PostTrainConfig, RLConfig, SFTConfig

# --------------------------------------------------------------------------------------------- quantize
# moved to herd.quantize.config (its library); re-exported here for existing imports
from herd.quantize.config import CalibrationConfig, QuantizeConfig, QuantScheme, QuantSchemeName  # noqa: F401

# --------------------------------------------------------------------------------------------- deploy
# The deploy section lives with its library (herd.serve.config); re-exported here for older imports.
from herd.serve.config import DeployConfig, ReplicaConfig

__all__ = ["CalibrationConfig", "DPOConfig", "DeployConfig", "EvaluateConfig", "NeedleConfig", "PostTrainConfig",
           "QuantScheme", "QuantizeConfig", "RLConfig", "ReplicaConfig", "SFTConfig"]

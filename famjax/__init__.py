"""famjax: TransformerFAM (feedback attention memory) in JAX/Flax."""
from famjax.quiet import quiet_tensorflow

quiet_tensorflow()   # before anything imports tensorflow

# pylint: disable=wrong-import-position
from famjax.config import AttentionConfig, ModelConfig
from famjax.model import Transformer

__version__ = "0.1.0"
__all__ = ["AttentionConfig", "ModelConfig", "Transformer"]

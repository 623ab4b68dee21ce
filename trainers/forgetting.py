"""What a generation forgets of the previous generation's weights before it trains."""
import logging

import torch.nn as nn

from models.evolution import reset_layers, split_reinitialize

log = logging.getLogger("ke")


def forget(cfg, model: nn.Module, generation: int):
    """Re-initialise what generation `generation` forgets: the reset hypothesis (Knowledge
    Evolution, --evolve_mode) or whole later layers (--reset_layer_name, with --reset_bn)."""
    if cfg.reset_layer_name:
        reset = reset_layers(model, cfg.reset_layer_name, cfg.reset_bn)
        log.info(f"generation {generation}: re-initialised {len(reset)} layers under "
                 f"{cfg.reset_layer_name}")
    else:
        split_reinitialize(cfg, model)

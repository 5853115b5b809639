"""Stand-in for upstream's `DepthModel` (depth_models/base.py): the network in `.model`, on `.device`."""
import torch


class DepthModel:
    def __init__(self, model, device="cuda"):
        self.model = model
        self.device = torch.device(device)
        self.model.to(self.device)
        self.model.eval()

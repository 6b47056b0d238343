"""Fine-tuning the pretrained CHGNet graph layers under a classification head (any matcard loss).

Input is CHGNet's own ``CrystalGraph`` objects (``matcard.featurize.chgnet_graphs``), not
torch-geometric ``Data``: CHGNet needs its bond graph and angle bases, which it builds itself.
``forward`` takes a ``CrystalGraphBatch`` (what the training loop and the bundle's loaders give)
or a plain list of graphs. ``param_groups(lr)`` gives the optimiser a lower learning rate for the
pretrained part; the training loop uses it.

``forward`` returns ``(logits, embedding)`` like every matcard model; the embedding is the mean
over atoms of CHGNet's normalised last-layer atom features (the 0.3.0 crystal feature divided by
the atom count), passed through a small head.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from matcard.errors import ConfigError


class ChgnetFinetune(nn.Module):
    """Pretrained CHGNet layers + classification head; only the last ``train_blocks`` interaction
    blocks (and the read-out norm) are trained, the rest stays frozen."""

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        *,
        model_version: str = "0.3.0",
        train_blocks: int = 1,
        hidden: int = 64,
        dropout: float = 0.0,
        pretrained_lr_multiplier: float = 0.1,
    ) -> None:
        super().__init__()
        from matcard.featurize.chgnet import check_model_version, load_chgnet

        del in_dim  # the registry passes an input width; CHGNet embeds atomic numbers itself
        try:
            check_model_version(model_version)
        except ConfigError as error:  # name the field the user set, not the featurizer's
            message = str(error).replace("featurizer.model_version", "model.params.model_version", 1)
            raise ConfigError(message) from None
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}")
        if pretrained_lr_multiplier <= 0:
            raise ValueError("pretrained_lr_multiplier must be positive")
        # a private copy: the featurizer's cached model stays frozen and shared
        self.chgnet = copy.deepcopy(load_chgnet(model_version))
        # the shared copy is in eval mode; this one follows the module's mode like any layer (the
        # released checkpoints have dropout 0, so the mode does not change their output)
        self.chgnet.train()
        n_conv = int(self.chgnet.n_conv)
        if not 0 <= train_blocks <= n_conv:
            raise ValueError(f"train_blocks must be in 0..{n_conv}, got {train_blocks}")
        self.train_blocks = train_blocks
        self.pretrained_lr_multiplier = float(pretrained_lr_multiplier)
        self._set_trainable(n_conv - train_blocks)
        width = int(self.chgnet.model_args["atom_fea_dim"])
        head: list[nn.Module] = [nn.Linear(width, hidden), nn.SiLU()]
        if dropout > 0:
            head.append(nn.Dropout(dropout))
        self.head = nn.Sequential(*head)
        self.classifier = nn.Linear(hidden, n_classes)
        self.embedding_dim = hidden

    def _set_trainable(self, first_trained: int) -> None:
        model = self.chgnet
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        blocks: list[Any] = [model.atom_conv_layers, model.bond_conv_layers, model.angle_layers]
        for layers in blocks:
            for index, layer in enumerate(layers):
                if layer is not None and index >= first_trained:
                    for parameter in layer.parameters():
                        parameter.requires_grad_(True)
        if first_trained < model.n_conv and model.readout_norm is not None:
            for parameter in model.readout_norm.parameters():
                parameter.requires_grad_(True)

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimizer groups: the head at ``lr``, the trained CHGNet layers at ``lr x multiplier``."""
        pretrained = [p for p in self.chgnet.parameters() if p.requires_grad]
        new = [*self.head.parameters(), *self.classifier.parameters()]
        groups = [{"params": new, "lr": lr}]
        if pretrained:
            groups.append({"params": pretrained, "lr": lr * self.pretrained_lr_multiplier})
        return groups

    def forward(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        graphs: Sequence[Any] = getattr(batch, "graphs", batch)
        with warnings.catch_warnings():
            # chgnet turns a grad-tracking cell volume into a tensor internally, once per batch; harmless
            warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")
            prediction = self.chgnet(list(graphs), task="e", return_crystal_feas=True)
        counts = prediction["atoms_per_graph"].to(prediction["crystal_fea"].dtype)
        mean_atoms = prediction["crystal_fea"] / counts[:, None]  # 0.3.0 sums over atoms
        embedding = self.head(mean_atoms.float())
        return self.classifier(embedding), embedding

"""Models: the benchmark CNN, a small CNN for tiny images and ResNet-18, selected by name.

``build_model(..., generator=g)`` draws initial weights from ``g`` only, never from the global RNG.
"""

from blazefl.models.cnn import CNN
from blazefl.models.resnet import resnet18
from blazefl.models.selector import MODELS, ModelSelector, build_model
from blazefl.models.small_cnn import SmallCNN

__all__ = ["CNN", "MODELS", "ModelSelector", "SmallCNN", "build_model", "resnet18"]

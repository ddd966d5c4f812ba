"""``image``: a torchvision classification backbone without its classifier, over image files."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from fusionrec.components import FieldInfo
from fusionrec.errors import ConfigError
from fusionrec_media.base import MediaEncoder, MediaProblem, existing_file
from fusionrec_media.freezing import longest_module_list

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageEncoder(MediaEncoder):
    """``torchvision.models.get_model(backbone, weights=weights)`` with its last ``nn.Linear`` (the
    classifier: resnet ``fc``, mobilenet/efficientnet/convnext ``classifier[-1]``, vit
    ``heads.head``) replaced by ``nn.Identity``: image paths ``-> [U, dim]``.

    Preprocessing: with ``weights`` (``DEFAULT``, ``IMAGENET1K_V1`` or ``ResNet18_Weights.IMAGENET1K_V1``)
    the weights' own transforms, and ``image_size``/``mean``/``std`` are ignored; without, resize the
    short side to ``image_size``, centre-crop to a square, scale to [0, 1] and normalise.
    ``finetune_top`` counts blocks: a ResNet's ``layer1``..``layer4``, else the children of
    ``.features`` (mobilenet, efficientnet, convnext, vgg...), else the longest block list (vit's
    ``encoder.layers``).
    """

    name = "image"

    def __init__(self, field: FieldInfo, dim: int, *, backbone: str, weights: str | None = None,
                 image_size: int = 224, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 mode: str = "frozen", finetune_top: int | None = None, learning_rate: float | None = None,
                 strict: bool = False):
        super().__init__(field, dim, mode=mode, finetune_top=finetune_top, learning_rate=learning_rate,
                         strict=strict)
        # Imported here: the registry loads every plugin at start-up, runs without images needn't pay.
        from torchvision.models import get_model, get_model_weights
        from torchvision.transforms import v2

        try:
            weight = get_model_weights(backbone).verify(weights) if weights else None
            network = get_model(backbone, weights=weight)
        except Exception as error:  # an unknown name, unknown weights, weights that cannot be downloaded
            raise ConfigError(f"{self.key}: cannot build torchvision model {backbone!r} with weights "
                              f"{weights!r}: {type(error).__name__}: {error}") from error
        width = remove_classifier(network, f"{self.key}.backbone")
        if weight is not None:
            self.transform = weight.transforms()
        else:
            self.transform = v2.Compose([v2.ToImage(), v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size),
                                         v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])
        self.backbone_name = backbone
        self.weights = str(weight) if weight is not None else None  # DEFAULT resolved to the real name
        self.pixel_shape = tuple(self.transform(Image.new("RGB", (8, 8))).shape)  # for missing images
        self.attach_backbone(network, width, feature_blocks(network))

    def prepare(self, contents: list) -> dict[str, Any]:
        images, present, problems = self.collect(contents, self.read_image)
        pixels = [image if image is not None else torch.zeros(self.pixel_shape) for image in images]
        return {"pixels": torch.stack(pixels) if pixels else torch.zeros(0, *self.pixel_shape),
                "present": present, "problems": problems}

    def read_image(self, content: Any) -> Tensor:
        path = existing_file(content)
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except Exception as error:  # PIL raises OSError, SyntaxError, ValueError... for a broken file
            raise MediaProblem(f"cannot decode image: {type(error).__name__}: {error}") from error
        return self.transform(rgb)

    def extract(self, inputs: dict[str, Tensor]) -> Tensor:
        return self.backbone(inputs["pixels"])

    def preprocessing(self) -> dict:
        return {"backbone": self.backbone_name, "weights": self.weights, "transform": repr(self.transform)}


def remove_classifier(network: nn.Module, key: str) -> int:
    """Replace the network's last ``nn.Linear`` by ``nn.Identity``; returns its input width."""
    linears = [(name, module) for name, module in network.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ConfigError(f"{key}: this torchvision model has no Linear classifier to remove")
    name, classifier = linears[-1]
    parent_name, _, attribute = name.rpartition(".")
    setattr(network.get_submodule(parent_name), attribute, nn.Identity())
    return classifier.in_features


def feature_blocks(network: nn.Module) -> list[nn.Module]:
    if all(hasattr(network, f"layer{i}") for i in range(1, 5)):  # resnet, resnext, wide_resnet
        return [getattr(network, f"layer{i}") for i in range(1, 5)]
    if isinstance(getattr(network, "features", None), nn.Module):
        return list(network.features.children())
    return longest_module_list(network, (nn.ModuleList, nn.Sequential))

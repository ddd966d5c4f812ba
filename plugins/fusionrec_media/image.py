"""``image``: a torchvision classification backbone without its classifier, over image files."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from fusionrec.components import FieldInfo, PositiveFloat, PositiveInt
from fusionrec.errors import ConfigError
from fusionrec.serving.content import ImagePreparer
from fusionrec_media.base import MediaEncoder
from fusionrec_media.freezing import longest_module_list

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageEncoder(MediaEncoder):
    """``torchvision.models.get_model(backbone, weights=weights)`` with its last ``nn.Linear`` (the
    classifier: resnet ``fc``, mobilenet/efficientnet/convnext ``classifier[-1]``, vit
    ``heads.head``) replaced by ``nn.Identity``: image paths ``-> [U, dim]``.

    Preprocessing (:class:`fusionrec.serving.content.ImagePreparer`, shared with exported bundles): resize
    the short side (bilinear), centre-crop a square, scale to [0, 1] and normalise. With ``weights``
    (``DEFAULT``, ``IMAGENET1K_V1`` or ``ResNet18_Weights.IMAGENET1K_V1``) the sizes, mean and std are
    the weights' own (e.g. 256 then 224) and ``image_size``/``mean``/``std`` are ignored; without,
    both sizes are ``image_size``.
    ``finetune_top`` counts blocks: a ResNet's ``layer1``..``layer4``, else the children of
    ``.features`` (mobilenet, efficientnet, convnext, vgg...), else the longest block list (vit's
    ``encoder.layers``).
    """

    name = "image"

    def __init__(self, field: FieldInfo, dim: PositiveInt, *, backbone: str, weights: str | None = None,
                 image_size: PositiveInt = 224, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, mode: str = "frozen", finetune_top: PositiveInt | None = None,
                 learning_rate: PositiveFloat | None = None, strict: bool = False):
        super().__init__(field, dim, mode=mode, finetune_top=finetune_top, learning_rate=learning_rate,
                         strict=strict)
        # Imported here: the registry loads every plugin at start-up, runs without images needn't pay.
        from torchvision.models import get_model, get_model_weights

        try:
            weight = get_model_weights(backbone).verify(weights) if weights else None
            network = get_model(backbone, weights=weight)
        except Exception as error:  # an unknown name, unknown weights, weights that cannot be downloaded
            raise ConfigError(f"{self.key}: cannot build torchvision model {backbone!r} with weights "
                              f"{weights!r}: {type(error).__name__}: {error}") from error
        width = remove_classifier(network, f"{self.key}.backbone")
        if weight is not None:  # the sizes and statistics the weights were trained with
            transforms = weight.transforms()
            self.resize, self.crop = transforms.resize_size[0], transforms.crop_size[0]
            mean, std = transforms.mean, transforms.std
        else:
            self.resize = self.crop = image_size
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]
        self.preparer = ImagePreparer(self.resize, self.crop, self.mean, self.std)
        self.backbone_name = backbone
        self.weights = str(weight) if weight is not None else None  # DEFAULT resolved to the real name
        self.attach_backbone(network, width, feature_blocks(network))

    def extract(self, inputs: dict[str, Tensor]) -> Tensor:
        return self.backbone(inputs["pixels"])

    def preprocessing(self) -> dict:
        return {"backbone": self.backbone_name, "weights": self.weights, "resize": self.resize, "crop": self.crop,
                "mean": self.mean, "std": self.std}


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

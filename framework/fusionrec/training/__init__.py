"""Lightning glue: the training module and its callbacks."""

from lightning.pytorch.utilities import _pytree as _lightning_pytree
from torch.utils import _pytree as _torch_pytree

# Lightning (2.6.6 and before) builds every CombinedLoader's leaf spec with torch's LeafSpec(), which
# torch >= 2.9 deprecates with a FutureWarning on every fit (Lightning-AI/pytorch-lightning#21326);
# treespec_leaf() is torch's replacement and returns the same leaf spec.
if hasattr(_torch_pytree, "treespec_leaf") and _lightning_pytree.LeafSpec is _torch_pytree.LeafSpec:
    _lightning_pytree.LeafSpec = _torch_pytree.treespec_leaf

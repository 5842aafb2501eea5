"""Object prior of object-guided localization (OGL; EZ-VSL, Mo & Morgado, ECCV 2022).

JSA Tables 1 and 2 report results "with OGL": the localization map is blended with an
ImageNet ResNet-18's saliency, the mean absolute value of its last feature map over the
channels (EZ-VSL `test.py`: `avgpool = Identity`, `fc = Unflatten + NormReducer(dim=1)`;
the JSA release's `test_model.py` builds the same model). The blend itself is
`avloc.metrics.localization.object_guided_map`.
"""

import flax.linen as nn
import jax.numpy as jnp

from avloc.constants import IMAGENET_MEAN, IMAGENET_STD
from avloc.models import maps
from avloc.models.resnet import ResNet18, normalize_pixels


class ObjectSaliency(nn.Module):
  """uint8 image [B, H, W, 3] -> saliency [B, h, w] = mean_c |ResNet18(image)[..., c]|.

  The trunk is frozen ImageNet weights (`avloc.weights.load_image_trunk`), run with its
  BatchNorm running statistics.
  """

  width: int = 64
  mean: tuple[float, ...] = IMAGENET_MEAN
  std: tuple[float, ...] = IMAGENET_STD

  @nn.compact
  def __call__(self, image):
    features = ResNet18(self.width, name='trunk')(
        normalize_pixels(image, self.mean, self.std), train=False)
    return jnp.mean(jnp.abs(features), axis=-1)


def object_prior_maps(trunk_variables: dict, image):
  """ImageNet saliency upsampled to the image: image [B, H, W, 3] -> [B, H, W].

  trunk_variables: {'params', 'batch_stats'} of a torchvision-layout ResNet-18 trunk.
  Upsampling is PyTorch's bicubic (align_corners=False), as the JSA release does for the
  object map; EZ-VSL uses bilinear with align_corners=True there.
  """
  width = trunk_variables['params']['conv1']['kernel'].shape[-1]
  saliency = ObjectSaliency(width).apply(
      {'params': {'trunk': trunk_variables['params']},
       'batch_stats': {'trunk': trunk_variables['batch_stats']}}, image)
  return maps.upsample_bicubic(saliency, image.shape[1:3])

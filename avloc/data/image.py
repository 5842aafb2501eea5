"""Frame decoding and the official releases' image transforms (NumPy + PIL, input workers).

Evaluation: Resize((S, S), bicubic). Training (LVS / EZ-VSL / JSA release):
Resize(int(1.1 * S), bicubic) on the shorter side, RandomCrop(S), horizontal flip; with
`hard_augment` (the JSA release's `hard_img`) also GaussianBlur(5) p=0.8,
ColorJitter(0.8, 0.8, 0.8, 0.2) p=0.8 and RandomGrayscale p=0.2, in torchvision's
order. ImageNet mean/std normalization happens inside the image encoder, so images stay
uint8 [H, W, 3] until then (4x less host-to-device traffic).
"""

import io

import ml_collections
import numpy as np
from PIL import Image

_GRAY = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601-2 luma, as torchvision


def to_rgb(image: Image.Image) -> Image.Image:
  """Any PIL mode (L, LA, P, RGBA, CMYK, I;16, ...) -> RGB; alpha is composited on black."""
  if image.mode == 'RGB':
    return image
  if image.mode in ('I;16', 'I;16B', 'I;16L', 'I'):
    array = np.asarray(image, np.float64)
    array = 255.0 * array / max(array.max(), 1.0)
    image = Image.fromarray(array.astype(np.uint8))
  if image.mode in ('RGBA', 'LA', 'PA') or (image.mode == 'P' and 'transparency' in image.info):
    image = image.convert('RGBA')
    background = Image.new('RGBA', image.size, (0, 0, 0, 255))
    image = Image.alpha_composite(background, image)
  return image.convert('RGB')


def decode_image(data: bytes) -> np.ndarray:
  """Encoded image bytes (JPEG, PNG, ...) -> uint8 [H, W, 3] RGB."""
  with Image.open(io.BytesIO(data)) as image:
    image.load()
    return np.asarray(to_rgb(image))


def decode_mask(data: bytes) -> np.ndarray:
  """PNG mask bytes -> bool [H, W] (any non-zero pixel is foreground)."""
  with Image.open(io.BytesIO(data)) as image:
    array = np.asarray(image.convert('L'))
  return array > 0


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='JPEG', quality=quality)
  return buffer.getvalue()


def encode_png(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format='PNG')
  return buffer.getvalue()


def resize(image: np.ndarray, size: tuple[int, int], resample=Image.BICUBIC) -> np.ndarray:
  """uint8 [H, W, C] -> [size[0], size[1], C]."""
  return np.asarray(Image.fromarray(image).resize((size[1], size[0]), resample))


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
  """bool [H, W] -> bool [size, size] (nearest neighbour)."""
  return resize(mask.astype(np.uint8) * 255, (size, size), Image.NEAREST) > 0


def eval_transform(image: np.ndarray, config: ml_collections.ConfigDict) -> np.ndarray:
  """uint8 [H, W, 3] -> [S, S, 3]: Resize((S, S), bicubic)."""
  return resize(image, (config.size, config.size))


def train_transform(image: np.ndarray, rng: np.random.Generator,
                    config: ml_collections.ConfigDict) -> np.ndarray:
  """uint8 [H, W, 3] -> augmented uint8 [S, S, 3] (see module docstring)."""
  height, width = image.shape[:2]
  scale = config.train_resize / min(height, width)
  shape = (max(config.size, round(height * scale)), max(config.size, round(width * scale)))
  image = resize(image, shape)
  top = rng.integers(0, shape[0] - config.size + 1)
  left = rng.integers(0, shape[1] - config.size + 1)
  image = image[top:top + config.size, left:left + config.size]
  if config.hard_augment and rng.random() < 0.8:
    image = gaussian_blur(image, sigma=rng.uniform(0.1, 2.0))
  if config.flip and rng.random() < 0.5:
    image = image[:, ::-1]
  if config.hard_augment:
    if rng.random() < 0.8:
      image = color_jitter(image, rng, strength=0.8, hue=0.2)
    if rng.random() < 0.2:
      image = grayscale(image)
  return np.ascontiguousarray(image)


def gaussian_blur(image: np.ndarray, sigma: float, kernel_size: int = 5) -> np.ndarray:
  """torchvision GaussianBlur: separable kernel, reflect padding. uint8 [H, W, 3]."""
  half = kernel_size // 2
  kernel = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
  kernel /= kernel.sum()
  out = np.pad(image.astype(np.float32), ((half, half), (half, half), (0, 0)), mode='reflect')
  out = sum(w * out[i:i + image.shape[0]] for i, w in enumerate(kernel))
  out = sum(w * out[:, i:i + image.shape[1]] for i, w in enumerate(kernel))
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def grayscale(image: np.ndarray) -> np.ndarray:
  gray = np.round(image.astype(np.float32) @ _GRAY).clip(0, 255).astype(np.uint8)
  return np.repeat(gray[..., None], 3, axis=-1)


def color_jitter(image: np.ndarray, rng: np.random.Generator, strength: float,
                 hue: float) -> np.ndarray:
  """torchvision ColorJitter(strength, strength, strength, hue): brightness, contrast,
  saturation factors uniform in [1 - strength, 1 + strength] and a hue shift uniform in
  [-hue, hue], applied in a random order (PIL's 8-bit HSV for the hue step)."""
  factors = rng.uniform(max(0.0, 1 - strength), 1 + strength, 3)
  shift = rng.uniform(-hue, hue)
  out = image.astype(np.float32)
  for op in rng.permutation(4):
    if op == 0:
      out = np.clip(out * factors[0], 0, 255)
    elif op == 1:
      mean = np.round(out @ _GRAY).mean()
      out = np.clip(factors[1] * out + (1 - factors[1]) * mean, 0, 255)
    elif op == 2:
      gray = (out @ _GRAY)[..., None]
      out = np.clip(factors[2] * out + (1 - factors[2]) * gray, 0, 255)
    elif hue > 0:  # torchvision skips the hue step when hue = 0
      hsv = np.asarray(Image.fromarray(out.round().astype(np.uint8)).convert('HSV')).copy()
      hsv[..., 0] = (hsv[..., 0].astype(np.int32) + round(shift * 255)) % 256
      out = np.asarray(Image.fromarray(hsv, 'HSV').convert('RGB'), np.float32)
  return out.round().astype(np.uint8)

"""Heatmap overlays, colour bars and image grids as uint8 arrays (NumPy + PIL only)."""

import io

import numpy as np
from PIL import Image, ImageDraw

from avloc import paths

# Jet colour map control points (value, r, g, b), as cv2.COLORMAP_JET used by the
# official releases' visualizations.
_JET = np.array([
    [0.00, 0.0, 0.0, 0.5], [0.11, 0.0, 0.0, 1.0], [0.125, 0.0, 0.0, 1.0],
    [0.34, 0.0, 0.86, 1.0], [0.35, 0.0, 0.9, 0.97], [0.375, 0.08, 1.0, 0.9],
    [0.64, 0.9, 1.0, 0.1], [0.66, 1.0, 0.9, 0.0], [0.89, 1.0, 0.0, 0.0], [1.0, 0.5, 0.0, 0.0],
])
# Distinct colours for per-object masks.
OBJECT_COLOURS = np.array([(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48),
                           (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60)],
                          np.uint8)


def colorize(values: np.ndarray) -> np.ndarray:
  """[H, W] values in [0, 1] -> uint8 [H, W, 3] jet colours."""
  values = np.clip(np.nan_to_num(values), 0.0, 1.0)
  channels = [np.interp(values, _JET[:, 0], _JET[:, c]) for c in (1, 2, 3)]
  return np.round(np.stack(channels, -1) * 255).astype(np.uint8)


def normalize(heatmap: np.ndarray) -> np.ndarray:
  """Min-max normalization to [0, 1]; a constant map becomes zeros."""
  low, high = float(np.min(heatmap)), float(np.max(heatmap))
  return (heatmap - low) / (high - low) if high > low else np.zeros_like(heatmap, np.float32)


def overlay(image: np.ndarray, heatmap: np.ndarray, weight: float = 0.5) -> np.ndarray:
  """uint8 image [H, W, 3] blended with a [H, W] heatmap in [0, 1] (resized if needed)."""
  colours = colorize(heatmap)
  if colours.shape[:2] != image.shape[:2]:
    colours = np.asarray(Image.fromarray(colours).resize(image.shape[1::-1], Image.BILINEAR))
  blended = (1 - weight) * image.astype(np.float32) + weight * colours.astype(np.float32)
  return np.round(blended).astype(np.uint8)


def overlay_masks(image: np.ndarray, masks: np.ndarray, weight: float = 0.5) -> np.ndarray:
  """uint8 image [H, W, 3] with boolean masks [K, H, W] tinted in distinct colours."""
  out = image.astype(np.float32)
  for k, mask in enumerate(masks):
    colour = OBJECT_COLOURS[k % len(OBJECT_COLOURS)].astype(np.float32)
    out[mask] = (1 - weight) * out[mask] + weight * colour
  return np.round(out).astype(np.uint8)


def colour_bar(height: int, width: int = 16) -> np.ndarray:
  """uint8 [height, width, 3] vertical jet bar, 1 at the top, 0 at the bottom."""
  column = np.linspace(1.0, 0.0, height)[:, None].repeat(width, 1)
  return colorize(column)


def label(image: np.ndarray, text: str) -> np.ndarray:
  """Writes `text` in the top-left corner on a dark band."""
  canvas = Image.fromarray(image)
  draw = ImageDraw.Draw(canvas)
  box = draw.textbbox((2, 1), text)
  draw.rectangle((0, 0, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
  draw.text((2, 1), text, fill=(255, 255, 255))
  return np.asarray(canvas)


def grid(rows: list[list[np.ndarray]], pad: int = 2) -> np.ndarray:
  """Tiles uint8 [H, W, 3] images (same size within a row) into one image."""
  row_images = []
  width = max(sum(im.shape[1] + pad for im in row) for row in rows)
  for row in rows:
    height = max(im.shape[0] for im in row)
    canvas = np.full((height + pad, width, 3), 255, np.uint8)
    x = 0
    for im in row:
      canvas[:im.shape[0], x:x + im.shape[1]] = im
      x += im.shape[1] + pad
    row_images.append(canvas)
  return np.concatenate(row_images, 0)


def save_png(path, image: np.ndarray) -> None:
  """Writes uint8 [H, W, 3] as a PNG atomically (avloc.paths.write_bytes_atomic: `path`
  may be a URI such as gs://...)."""
  data = io.BytesIO()
  Image.fromarray(image).save(data, format='PNG')
  paths.write_bytes_atomic(path, [data.getvalue()])

"""Prediction on raw media (avloc.inference, avloc.predict): tiny exported models, any
image mode and audio format, videos, --save_maps, every bad input, the command line."""

import functools
import os
import subprocess
import sys

import av
import jax
import numpy as np
import pytest
import soundfile
from PIL import Image

from avloc import inference, methods, predict
from avloc.data import audio as audio_lib
from avloc.data import image as image_lib
from avloc.data import media
from tests import exports as exports_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_SAMPLES = os.path.join(os.path.dirname(REPO), 'shared', 'real_samples')
SIZE = 48  # 3x3 feature grid


@pytest.fixture(scope='module')
def exports(tmp_path_factory):
  root = tmp_path_factory.mktemp('exports')
  return {'jsa': exports_lib.write_export(exports_lib.tiny_jsa(SIZE), root / 'jsa'),
          'noprior': exports_lib.write_export(exports_lib.tiny_noprior(SIZE), root / 'noprior')}


@pytest.fixture(scope='module')
def localizers(exports):
  return {name: inference.Localizer.from_checkpoint(path) for name, path in exports.items()}


def _tone(seconds, rate, channels=2, frequency=440.0):
  time = np.arange(int(seconds * rate)) / rate
  wave = 0.3 * np.sin(2 * np.pi * frequency * time)
  return np.stack([wave * (0.5 + 0.5 * c) for c in range(channels)], axis=1).astype(np.float32)


def _picture(height, width, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (height, width, 3)).astype(np.uint8)


def _write_video(path, seconds=1.0, fps=10, audio=True):
  with av.open(str(path), 'w') as container:
    video = container.add_stream('mpeg4', rate=fps)
    video.width, video.height, video.pix_fmt = 64, 48, 'yuv420p'
    if audio:
      stream = container.add_stream('aac', rate=16000)
      stream.layout = 'mono'
    for i in range(int(seconds * fps)):
      pixels = np.full((48, 64, 3), 25 * i % 256, np.uint8)
      frame = av.VideoFrame.from_ndarray(pixels, format='rgb24')
      container.mux(video.encode(frame))
    container.mux(video.encode())
    if audio:
      tone = _tone(seconds, 16000, channels=1)[:, 0]
      for start in range(0, tone.size, 1024):
        frame = av.AudioFrame.from_ndarray(tone[None, start:start + 1024], format='flt',
                                           layout='mono')
        frame.sample_rate = 16000
        container.mux(stream.encode(frame))
      container.mux(stream.encode())


@pytest.fixture(scope='module')
def pairs(tmp_path_factory):
  """A folder of image + audio pairs: PNG in modes L and RGBA, a CMYK JPEG (PNG has no
  CMYK), an EXIF-rotated JPEG; stereo 44.1 kHz wav of different lengths."""
  directory = tmp_path_factory.mktemp('pairs')
  Image.fromarray(_picture(40, 60, 1)).convert('L').save(directory / 'gray.png')
  Image.fromarray(_picture(50, 30, 2)).convert('RGBA').save(directory / 'alpha.png')
  Image.fromarray(_picture(36, 36, 3)).convert('CMYK').save(directory / 'cmyk.jpg')
  exif = Image.Exif()
  exif[media.EXIF_ORIENTATION] = 6  # stored sideways: shown rotated by 90 degrees
  Image.fromarray(_picture(30, 70, 4)).save(directory / 'rotated.jpg', exif=exif)
  for i, stem in enumerate(('gray', 'alpha', 'cmyk', 'rotated')):
    soundfile.write(directory / f'{stem}.wav', _tone(0.2 + 0.4 * i, 44100), 44100)
  return directory


def test_load_image_turns_exif_rotated_photos_upright(pairs):
  upright = media.load_image(str(pairs / 'rotated.jpg'))
  assert upright.shape == (70, 30, 3)
  with Image.open(pairs / 'rotated.jpg') as stored:
    assert stored.size == (70, 30)  # (width, height) as stored


def test_sliding_windows_centre_shift_and_tile():
  waveform = np.arange(100, dtype=np.float32)
  windows = inference.sliding_windows(waveform, 10, 2.0, [0.0, 5.0, 9.9])
  np.testing.assert_array_equal(windows[0], np.arange(20))  # shifted inside the clip
  np.testing.assert_array_equal(windows[1], np.arange(40, 60))  # centred on 5 s
  np.testing.assert_array_equal(windows[2], np.arange(80, 100))
  short = inference.sliding_windows(waveform[:8], 10, 2.0, [0.3])[0]
  np.testing.assert_array_equal(short, np.tile(np.arange(8), 3)[:20])


def test_prepare_accepts_gray_alpha_and_multichannel_arrays(localizers):
  localizer = localizers['jsa']
  rgb = _picture(30, 50)
  for image in (rgb[..., 0], rgb[..., :1], np.dstack([rgb, np.full((30, 50), 255, np.uint8)])):
    assert localizer.prepare_image(image).shape == (SIZE, SIZE, 3)
  np.testing.assert_array_equal(  # opaque alpha: the RGB image
      localizer.prepare_image(np.dstack([rgb, np.full((30, 50), 255, np.uint8)])),
      localizer.prepare_image(rgb))
  for bad in (rgb.astype(np.float32), rgb[:0], rgb[..., :2]):
    with pytest.raises(ValueError, match='expected a non-empty uint8'):
      localizer.prepare_image(bad)
  stereo = _tone(0.1, 16000)
  spectrogram = localizer.prepare_audio(stereo)
  assert spectrogram.shape == (65, 1 + 8000 // 64, 1)  # 0.5 s, n_fft 128, hop 64
  np.testing.assert_array_equal(spectrogram, localizer.prepare_audio(stereo.mean(axis=1)))
  with pytest.raises(ValueError, match='NaN'):
    localizer.prepare_audio(np.full(100, np.nan))


def _reference(localizer, images, waveforms):
  """The method's localize on inputs preprocessed as the evaluation pipeline does."""
  config = localizer.config
  length = audio_lib.num_samples(config.data.audio)
  image = np.stack([image_lib.eval_transform(i, config.data.image) for i in images])
  spectrogram = np.stack([audio_lib.log_spectrogram(audio_lib.fit_length(w, length),
                                                    config.data.audio)[..., None]
                          for w in waveforms])
  method = methods.get_method(config.method)
  return jax.device_get(jax.jit(functools.partial(
      method.localize, method.build_model(config), config=config))(
          localizer.variables, image, spectrogram))


def test_jsa_folder_of_pairs_gives_overlays_and_the_methods_maps(localizers, pairs, tmp_path):
  localizer = localizers['jsa']
  summary = predict.predict('', str(tmp_path / 'out'), input_dir=str(pairs),
                            save_maps=str(tmp_path / 'maps.npz'), batch_size=4,
                            localizer=localizer, report=lambda _: None)
  stems = ['alpha', 'cmyk', 'gray', 'rotated']
  assert summary.failed == []
  assert sorted(os.listdir(tmp_path / 'out')) == [f'{s}.png' for s in stems]
  overlay = np.asarray(Image.open(tmp_path / 'out' / 'rotated.png'))
  assert overlay.shape[0] > 70 and overlay.shape[1] > 2 * 30  # two maps of the upright frame
  maps = np.load(tmp_path / 'maps.npz')
  names = [f'{s}.{"jpg" if s in ("cmyk", "rotated") else "png"}' for s in stems]
  images = [media.load_image(str(pairs / n)) for n in names]
  waveforms = [media.load_audio(str(pairs / f'{s}.wav'), 16000) for s in stems]
  reference = _reference(localizer, images, waveforms)
  outputs = localizer.localize(images, waveforms)  # the notebook API
  assert list(outputs['heatmaps']) == ['iqr', 'ca']  # the method's order: primary first
  np.testing.assert_allclose(outputs['heatmaps']['iqr'], reference['heatmaps']['iqr'],
                             rtol=1e-4, atol=1e-6)
  for i, name in enumerate(names):
    for key in ('iqr', 'ca'):
      assert maps[f'{name}/heatmap_{key}'].shape == (SIZE, SIZE)
      np.testing.assert_allclose(maps[f'{name}/heatmap_{key}'], reference['heatmaps'][key][i],
                                 rtol=1e-4, atol=1e-6)
    for key in ('ca', 'ia'):
      assert maps[f'{name}/lowres_{key}'].shape == (3, 3)
      np.testing.assert_allclose(maps[f'{name}/lowres_{key}'], reference['lowres'][key][i],
                                 rtol=1e-4, atol=1e-6)


def test_noprior_video_gives_a_gif_and_one_map_per_sampled_frame(localizers, tmp_path):
  localizer = localizers['noprior']
  _write_video(tmp_path / 'clip.mp4', seconds=2.0)
  summary = predict.predict('', str(tmp_path / 'clip.gif'), video=str(tmp_path / 'clip.mp4'),
                            save_maps=str(tmp_path / 'maps.npz'), video_fps=2.0,
                            batch_size=3, localizer=localizer, report=lambda _: None)
  assert summary.written == [str(tmp_path / 'clip.gif'), str(tmp_path / 'maps.npz')]
  assert localizer._localize._cache_size() == 1  # 4 frames in batches of 3: one compilation
  with Image.open(tmp_path / 'clip.gif') as gif:
    assert gif.n_frames == 4
  maps = np.load(tmp_path / 'maps.npz')
  np.testing.assert_allclose(maps['times'], [0.0, 0.5, 1.0, 1.5], atol=0.06)
  assert maps['heatmap_sam'].shape == (4, SIZE, SIZE)
  assert maps['object_maps'].shape == (4, 3, SIZE, SIZE)
  assert maps['object_valid'].shape == (4, 3) and maps['object_valid'].dtype == bool
  frames = [frame for _, frame in media.iter_frames(str(tmp_path / 'clip.mp4'), 2.0, 10)]
  _, waveform = media.read_video(str(tmp_path / 'clip.mp4'), 16000, frame=False)
  windows = inference.sliding_windows(waveform, 16000, 0.5, maps['times'])
  for chunk in (slice(0, 3), slice(1, 4)):  # batches of 3, as predicted
    reference = _reference(localizer, frames[chunk], windows[chunk])
    np.testing.assert_allclose(maps['heatmap_sam'][chunk], reference['heatmaps']['sam'],
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(maps['object_maps'][chunk], reference['object_maps'], atol=1e-5)


def test_noprior_image_overlay_shows_object_masks(localizers, pairs, tmp_path):
  summary = predict.predict('', str(tmp_path / 'out.png'), image=str(pairs / 'gray.png'),
                            audio=str(pairs / 'gray.wav'), batch_size=3,
                            localizer=localizers['noprior'])
  assert summary.written == [str(tmp_path / 'out.png')]
  panel = np.asarray(Image.open(tmp_path / 'out.png'))
  assert panel.shape[1] > 2 * 60  # the sound map, a colour bar, the object masks


def _bad_inputs(directory):
  """{case: (predict keyword arguments, the file the message names, its reason)}."""
  directory.mkdir()
  good_image, good_audio = directory / 'good.png', directory / 'good.wav'
  Image.fromarray(_picture(20, 20)).save(good_image)
  soundfile.write(good_audio, _tone(0.5, 16000), 16000)
  (directory / 'empty.png').write_bytes(b'')
  (directory / 'garbage.wav').write_bytes(b'RIFF not really a wave file')
  soundfile.write(directory / 'silent.wav', np.zeros(8000, np.float32), 16000)
  _write_video(directory / 'mute.mp4', audio=False)
  pair = lambda image, audio: dict(image=str(image), audio=str(audio))  # noqa: E731
  return {
      'missing image': (pair(directory / 'nope.jpg', good_audio), 'nope.jpg', 'file not found'),
      'missing audio': (pair(good_image, directory / 'nope.wav'), 'nope.wav', 'file not found'),
      'zero-size image': (pair(directory / 'empty.png', good_audio), 'empty.png',
                          'cannot decode image'),
      'unreadable audio': (pair(good_image, directory / 'garbage.wav'), 'garbage.wav',
                           'cannot decode'),
      'silent audio': (pair(good_image, directory / 'silent.wav'), 'silent.wav',
                       'silent audio'),
      'no audio track': (dict(video=str(directory / 'mute.mp4')), 'mute.mp4', 'no audio track'),
      'missing video': (dict(video=str(directory / 'nope.mp4')), 'nope.mp4', 'file not found'),
  }


def test_every_bad_input_fails_naming_the_file_and_writes_nothing(localizers, tmp_path):
  cases = _bad_inputs(tmp_path / 'media')
  for case, (inputs, name, reason) in cases.items():
    out = tmp_path / case.replace(' ', '_')
    messages = []
    summary = predict.predict('', str(out), save_maps=str(out / 'maps.npz'),
                              localizer=localizers['jsa'], report=messages.append, **inputs)
    assert len(messages) == 1 and summary.failed == messages, case
    assert name in messages[0] and reason in messages[0], (case, messages)
    assert '\n' not in messages[0]
    assert summary.written == [] and not out.exists(), case


def test_folder_pairing_problems_are_reported_per_file(tmp_path):
  for name in ('a.png', 'a.wav', 'b.jpg', 'c.flac', 'd.png', 'd.jpg', 'd.wav', 'e.mp4',
               'notes.txt'):
    (tmp_path / name).write_bytes(b'')
  items, problems = predict.find_inputs(str(tmp_path))
  assert [(i.name, i.video is not None) for i in items] == [('a.png', False), ('e.mp4', True)]
  assert [os.path.basename(p.split(':')[0].split(',')[0]) for p in problems] == [
      'b.jpg', 'c.flac', 'd.jpg']
  (tmp_path / 'empty').mkdir()
  with pytest.raises(media.MediaError, match='empty: holds no image'):
    predict.find_inputs(str(tmp_path / 'empty'))
  with pytest.raises(media.MediaError, match='a.png: no such directory'):
    predict.find_inputs(str(tmp_path / 'a.png'))


def test_command_line_writes_good_inputs_and_fails_on_bad_ones(exports, pairs, tmp_path):
  # The session's compilation cache (tests/conftest.py) spares the process a compilation.
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0.5')
  inputs = tmp_path / 'inputs'
  inputs.mkdir()
  (inputs / 'ok.png').write_bytes((pairs / 'alpha.png').read_bytes())
  (inputs / 'ok.wav').write_bytes((pairs / 'alpha.wav').read_bytes())
  Image.fromarray(_picture(20, 20)).save(inputs / 'quiet.png')
  soundfile.write(inputs / 'quiet.wav', np.zeros(4000, np.float32), 16000)
  result = subprocess.run(
      [sys.executable, '-m', 'avloc.predict', f'--checkpoint={exports["noprior"]}/export',
       f'--input_dir={inputs}', f'--output={tmp_path}/out', f'--save_maps={tmp_path}/m.npz',
       '--batch_size=3'], cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
      env=env)
  assert result.returncode == 1, result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith('avloc-predict:')]
  assert errors == [f'avloc-predict: {inputs}/quiet.wav: silent audio (all samples are zero)']
  assert os.listdir(tmp_path / 'out') == ['ok.png']
  assert sorted(np.load(tmp_path / 'm.npz')) == [
      'ok.png/heatmap_sam', 'ok.png/lowres_sam', 'ok.png/object_maps', 'ok.png/object_valid']
  usage = subprocess.run(
      [sys.executable, '-m', 'avloc.predict', f'--checkpoint={exports["jsa"]}',
       f'--image={inputs}/ok.png'], cwd=REPO, capture_output=True, text=True, timeout=300,
      check=False, env=env)
  assert usage.returncode == 1 and '--image and --audio go together' in usage.stderr


@pytest.mark.skipif(not os.path.isdir(REAL_SAMPLES), reason='../shared/real_samples is absent')
def test_real_samples_decode_and_localize(localizers, tmp_path):
  pairs_dir = os.path.join(REAL_SAMPLES, 'single_source_pairs')
  image, audio = (os.path.join(pairs_dir, f'dog_{kind}') for kind in ('image.jpg', 'audio.wav'))
  videos = os.path.join(REAL_SAMPLES, 'videos')
  video = os.path.join(videos, sorted(os.listdir(videos))[0])
  for name, inputs in (('jsa', dict(image=image, audio=audio, batch_size=4)),
                       ('noprior', dict(video=video, max_frames=3, batch_size=3))):
    summary = predict.predict('', str(tmp_path / name), localizer=localizers[name], **inputs)
    assert summary.failed == [] and len(summary.written) == 1

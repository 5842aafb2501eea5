"""Fault tolerance (issue 15): every fault is injected and its outcome asserted: the
exception or exit status, the message naming the file or field, the files afterwards.

Training runs use the linear model of tests/linear_method.py (a second to compile);
tests/test_faults_processes.py kills real processes."""

import asyncio
import gc
import json
import math
import os
import re
import signal

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import soundfile
from absl import flags
from PIL import Image

from avloc import (checkpointing, config as config_lib, evaluate, experiment, methods,
                   predict, preemption, sharding, train)
from avloc.data import audio as audio_lib
from avloc.data import image as image_lib
from avloc.data import media, pipeline, tfrecord
from avloc.metrics import avsbench, localization
from data_prep import common, vggss
from grain._src.python.ipc import shared_memory_array  # where Grain's workers put batches
from tests import exports, linear_method, splits, test_train

linear_method.register()

SIZE = 32


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp('data')
  splits.write_split(root / 'toy_train', num_examples=48, image_size=40, audio_seconds=0.5)
  splits.write_split(root / 'toy_test', num_examples=12, image_size=40, audio_seconds=0.5,
                     gt=tfrecord.GT_BOXES)
  return root


def _config(data_root, **train_fields):
  config = linear_method.get_config()
  config.data.root = str(data_root)
  config.data.train_split = 'toy_train'
  config.train.update(train_fields)
  return config


def _train(config, workdir, data_root, **kwargs):
  return test_train.train_run(config, str(workdir), str(data_root / 'toy_train'), **kwargs)


def _steps(workdir, key='train/loss'):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [row['step'] for row in map(json.loads, f) if key in row]


def _tensorboard_purges(workdir):
  """Steps of the SessionLog.START events: TensorBoard hides the events of later steps
  that earlier files hold."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  steps = []
  for name in sorted(os.listdir(os.path.join(workdir, 'tensorboard'))):
    for record in tfrecord.iter_records(os.path.join(workdir, 'tensorboard', name)):
      event = event_pb2.Event.FromString(record)
      if event.session_log.status == event_pb2.SessionLog.START:
        steps.append(event.step)
  return steps


def _checkpoints(workdir):
  return sorted(os.listdir(os.path.join(workdir, checkpointing.TRAIN_DIR)))


def _wav(path, waveform, rate=16000):
  soundfile.write(str(path), np.asarray(waveform, np.float32), rate, subtype='FLOAT')
  return str(path)


def _tone(seconds=0.5, rate=16000):
  return 0.3 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate)


def _jpeg(path, height, width, seed=0):
  pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3)).astype(np.uint8)
  Image.fromarray(pixels).save(str(path), quality=95)
  return str(path)


def _bomb_png(path):
  """A 13500 x 13500 PNG (182 MP, above twice Pillow's limit); 1 bit, ~22 kB."""
  Image.new('1', (13500, 13500)).save(str(path))
  return str(path)


# 1. Images above Pillow's decompression-bomb limit ---------------------------------------

def test_bomb_image_is_reported_and_the_rest_of_the_folder_is_predicted(tmp_path):
  media_dir = tmp_path / 'media'
  media_dir.mkdir()
  bomb = _bomb_png(media_dir / 'bomb.png')
  _wav(media_dir / 'bomb.wav', _tone())
  _jpeg(media_dir / 'good.jpg', 40, 50)
  _wav(media_dir / 'good.wav', _tone())
  export = exports.write_export(_config(tmp_path), tmp_path / 'export')
  messages = []
  summary = predict.predict(export, str(tmp_path / 'out'), input_dir=str(media_dir),
                            report=messages.append)
  assert messages == [f'{bomb}: cannot decode image (Image size (182250000 pixels) exceeds '
                      'limit of 178956970 pixels, could be decompression bomb DOS attack. '
                      'Only JPEG images are decoded at a reduced size.)']
  assert summary.written == [str(tmp_path / 'out' / 'good.png')]


def test_jpeg_above_the_limit_is_decoded_and_stored_at_reduced_size(tmp_path, monkeypatch):
  path = _jpeg(tmp_path / 'large.jpg', 300, 301)
  with Image.open(path) as full:
    expected = np.asarray(full.convert('RGB').reduce(4), np.float64)
  monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 10_000)  # 300 x 301 is 9x the limit
  frame = media.load_image(path)
  assert frame.shape == (75, 76, 3)  # DCT scaling by 1/4: the largest size under the limit
  assert np.abs(frame - expected).mean() < 12  # the same picture, decoded smaller
  stored = image_lib.decode_image(common._frame_bytes(path))  # pylint: disable=protected-access
  assert stored.shape == (75, 76, 3)  # re-encoded, not the full-size file passed through


# 2. A crash or a failed save ---------------------------------------------------------------

def _slow_json_saves(monkeypatch, seconds):
  original = ocp.JsonCheckpointHandler._save_fn  # pylint: disable=protected-access

  async def slow(self, x, directory):
    await asyncio.sleep(seconds)
    await original(self, x, directory)

  monkeypatch.setattr(ocp.JsonCheckpointHandler, '_save_fn', slow)


def test_a_crash_completes_the_checkpoint_being_written(data, tmp_path, monkeypatch):
  _slow_json_saves(monkeypatch, 1.0)  # a slow disk: step 2's save still runs at step 3
  error = tfrecord.FormatError(f'{data}/toy_train/split-00001-of-00002.tfrecord: corrupt '
                               'data CRC of the record at byte 1234')

  def corrupt_record():
    raise error

  with pytest.raises(tfrecord.FormatError, match='corrupt data CRC'):
    _train(_config(data, max_steps=6), tmp_path / 'run', data, fault_at=3,
           fault=corrupt_record)
  assert _checkpoints(tmp_path / 'run') == ['2']  # complete, no 2.orbax-checkpoint-tmp


# A failed save (a full disk): tests/test_faults_processes.py, through the command line.


# 3. A corrupt latest checkpoint ------------------------------------------------------------

def test_a_corrupt_latest_checkpoint_is_reported_and_resume_falls_back(
    data, tmp_path, monkeypatch, capsys):
  workdir = tmp_path / 'run'
  _train(_config(data, max_steps=4), workdir, data)
  latest = workdir / 'checkpoints' / '4'
  for path in (latest / 'state' / 'd').iterdir():  # a disk error: array data cut short
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
  # avloc-predict on the workdir (its latest checkpoint): one line, exit status 1.
  for name, value in (('checkpoint', str(workdir)), ('output', str(tmp_path / 'out.png')),
                      ('image', _jpeg(tmp_path / 'a.jpg', 20, 20)),
                      ('audio', _wav(tmp_path / 'a.wav', _tone()))):
    monkeypatch.setattr(flags.FLAGS, name, value)
  with pytest.raises(SystemExit) as exit_status:
    predict.main(['avloc-predict'])
  assert exit_status.value.code == 1
  lines = capsys.readouterr().err.splitlines()
  assert len(lines) == 1 and lines[0].startswith(
      f'avloc-predict: {latest}: cannot restore this checkpoint (ValueError: ')
  logs = []
  state = _train(_config(data, max_steps=6), workdir, data, log=logs.append)
  assert int(state.step) == 6
  assert logs[0].startswith(f'{latest}: cannot restore this checkpoint (')
  assert logs[1] == ('Resuming from step 2, the newest checkpoint that restores; the newer '
                     'one(s) were moved to 4.unrestorable.')
  assert _checkpoints(workdir) == ['2', '4', '4.unrestorable', '6']  # 4 trained again
  assert _steps(workdir) == [1, 2, 3, 4, 5, 6]  # 3 and 4 logged once, after the resume
  assert _tensorboard_purges(workdir) == [3]  # and TensorBoard drops the earlier 3 and 4


# 4. Preemption -----------------------------------------------------------------------------

@pytest.fixture
def sigterm_is_an_error():
  """SIGTERM that the code under test leaves unhandled fails the test, not the session."""

  def unhandled(signum, frame):
    raise RuntimeError('SIGTERM reached the default handler')

  previous = signal.signal(signal.SIGTERM, unhandled)
  yield
  signal.signal(signal.SIGTERM, previous)


def test_sigterm_during_an_evaluation_stops_it_at_the_next_batch(
    data, tmp_path, monkeypatch, sigterm_is_an_error):
  config = _config(data, max_steps=2)
  config.eval.update(splits='toy_test', batch_size=4)  # 3 batches
  model_batches = []
  original = evaluate.Evaluator._outputs  # pylint: disable=protected-access

  def outputs(self, model, batch, audio_order=None):
    if not isinstance(model, str) and audio_order is None:  # the model with its own audio
      model_batches.append(batch['index'])
      if len(model_batches) == 1:
        os.kill(os.getpid(), signal.SIGTERM)
    return original(self, model, batch, audio_order)

  monkeypatch.setattr(evaluate.Evaluator, '_outputs', outputs)
  workdir = tmp_path / 'run'
  with pytest.raises(preemption.Preempted) as stop:
    experiment.run(config, str(workdir), log=lambda _: None)
  assert str(stop.value) == (
      'Preempted (SIGTERM) at step 0 of 2 during its evaluation: saved a checkpoint at step '
      '0; exiting with status 75. Re-run the same command to resume.')
  assert len(model_batches) == 1 and _checkpoints(workdir) == ['0']
  monkeypatch.setattr(evaluate.Evaluator, '_outputs', original)
  experiment.run(config, str(workdir), log=lambda _: None)  # evaluates step 0 again
  with open(workdir / 'eval_toy_test.json') as f:
    history = json.load(f)['history']
  assert [(h['model'], h['step']) for h in history] == [
      ('center prior', None), ('linear step 0', 0), ('linear step 2', 2)]


def test_several_processes_decide_at_the_preemption_sync_point(monkeypatch):
  """The multi-process path without processes: JAX's SIGTERM handler stays installed
  and `check` is JAX's sync point, asked with one counter that every process advances
  alike (tests/test_faults_processes.py runs two real processes)."""
  asked = []

  def reached_preemption_sync_point(counter):
    asked.append(counter)
    return counter == 3

  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  monkeypatch.setattr(preemption.multihost_utils, 'reached_preemption_sync_point',
                      reached_preemption_sync_point)
  before = signal.getsignal(signal.SIGTERM)
  with preemption.Guard() as guard:
    assert signal.getsignal(signal.SIGTERM) is before
    assert [guard.check() for _ in range(4)] == [False, False, True, True]
  assert asked == [1, 2, 3]


# 6. After a resume: metrics.jsonl and TensorBoard in the corrupt-checkpoint test above,
# eval_<split>.json in the preemption test, the end of a resumed run with Grain workers in
# tests/test_faults_processes.py. -----------------------------------------------------------

@pytest.mark.parametrize('batches_read', [1, None])  # None: all (the split has 3)
def test_an_evaluation_with_input_workers_leaves_no_shared_memory_behind(data, batches_read):
  config = _config(data)
  config.eval.update(num_workers=1, splits='toy_test')
  # What the evaluation and benchmarks/map_diagnostics.py read, left early or not.
  for count, batch in enumerate(pipeline.eval_batches(config, str(data / 'toy_test'),
                                                      batch_size=4), start=1):
    # Copied out of the worker's shared memory: a batch still referenced (a local, a
    # preempted run's traceback) would keep its segment until the run ends.
    assert type(batch['image']) is np.ndarray  # pylint: disable=unidiomatic-typecheck
    if count == batches_read:
      break
  del batch
  # Nor do the batches in flight, nor Grain's finished prefetch threads (reference cycles).
  assert not [o for o in gc.get_objects() if type(o) is shared_memory_array.SharedMemoryArray]


# 7. Non-finite values ----------------------------------------------------------------------

def test_a_nan_loss_stops_training_naming_the_step_and_saves_nothing_new(
    data, tmp_path, monkeypatch):
  make_train_step = train.make_train_step

  def nan_at_step_3(*args):
    step = make_train_step(*args)

    def faulty(state, batch):
      state, metrics = step(state, batch)
      return state, dict(metrics, loss=jnp.where(state.step == 3, jnp.nan, metrics['loss']))

    return faulty

  monkeypatch.setattr(train, 'make_train_step', nan_at_step_3)
  workdir = tmp_path / 'run'
  with pytest.raises(train.NonFiniteLoss) as failure:
    _train(_config(data, max_steps=6, log_every_steps=2), workdir, data)
  assert str(failure.value).startswith('step 3: the loss is nan (gradient norm ')
  assert str(failure.value).endswith(
      'stopped without saving anything new (the last checkpoint is step 2). Lower '
      'config.optim.learning_rate or set config.optim.grad_clip_norm, then re-run.')
  assert _checkpoints(workdir) == ['2'] and _steps(workdir) == [2]


def test_converters_and_predict_report_the_same_bad_inputs(tmp_path):
  """NaN and all-zero audio and a bomb frame: skipped with the reason, as predict does."""
  raw = tmp_path / 'raw'
  raw.mkdir()
  image = _jpeg(raw / 'frame.jpg', 36, 36)
  nan_audio = _tone()
  nan_audio[100] = np.nan
  clips = [
      common.Clip('good', image=image, audio=_wav(raw / 'good.wav', _tone())),
      common.Clip('nan', image=image, audio=_wav(raw / 'nan.wav', nan_audio)),
      common.Clip('silent', image=image, audio=_wav(raw / 'silent.wav', np.zeros(8000))),
      common.Clip('bomb', image=_bomb_png(raw / 'bomb.png'), audio=str(raw / 'good.wav')),
  ]
  manifest = common.convert(clips, str(tmp_path / 'out'), dataset='test', split='test',
                            gt=tfrecord.GT_NONE, classes=[], num_workers=1,
                            options=common.Options(audio_seconds=0.5), log=lambda _: None)
  reasons = {s['id']: s['reason'] for s in manifest.skipped}
  assert manifest.num_examples == 1
  assert reasons['nan'] == f'{raw}/nan.wav: NaN or infinite audio samples'
  assert reasons['silent'] == f'{raw}/silent.wav: silent audio (all samples are zero)'
  assert reasons['bomb'].startswith(f'{raw}/bomb.png: cannot decode image (Image size')
  for name in ('nan', 'silent'):
    with pytest.raises(media.MediaError, match=re.escape(reasons[name])):
      media.check_waveform(f'{raw}/{name}.wav', media.load_audio(f'{raw}/{name}.wav', 16000))


# 8. Start-up errors ------------------------------------------------------------------------

def test_start_up_errors_name_the_field_before_anything_is_written(data, tmp_path):
  config = _config(data)
  config.train.batch_size = 6
  with pytest.raises(config_lib.ConfigError, match=r'config\.train\.batch_size=6 must be '
                     r'divisible by the number of devices \(4\)'):
    experiment.run(config, str(tmp_path / 'run'))
  config = _config(data)
  config.eval.update(splits='toy_test', best_metric='vggss/iqr/ap50')
  with pytest.raises(config_lib.ConfigError) as failure:
    experiment.run(config, str(tmp_path / 'run'))
  assert str(failure.value) == (
      "config.eval.best_metric 'vggss/iqr/ap50' names the split 'vggss', which "
      "config.eval.splits ('toy_test') does not evaluate: set "
      "--config.eval.best_metric=<one of toy_test>/<metric> (or '' to export the last "
      'evaluation)')
  assert not os.path.exists(tmp_path / 'run')


# 9. Data fidelity --------------------------------------------------------------------------

# Two entries of the published vggss.json, verbatim: a coordinate of -2.88e16.
_VGGSS_ENTRIES = [
    {'file': 'MKC9LvRivTM_000030', 'class': 'playing french horn',
     'bbox': [[0.396875, 0.6625, -2.8823037615171176e+16, 0.984375]]},
    {'file': 'Db6Hjt0x28k_000056', 'class': 'playing timbales',
     'bbox': [[0.384375, 0.859375, 0.696875, -2.8823037615171176e+16],
              [0.05, 0.35625, 0.753125, 0.98125]]},
]
SHARED_VGGSS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), 'shared', 'metadata', 'vggss.json')


def test_vggss_boxes_out_of_range_are_clipped_as_the_official_evaluation(tmp_path):
  raw = tmp_path / 'raw'
  for folder in ('frames', 'audio'):
    (raw / folder).mkdir(parents=True)
  for entry in _VGGSS_ENTRIES:
    _jpeg(raw / 'frames' / f'{entry["file"]}.jpg', 36, 36)
    _wav(raw / 'audio' / f'{entry["file"]}.wav', _tone())
  (raw / 'vggss.json').write_text(json.dumps(_VGGSS_ENTRIES))
  out = str(tmp_path / 'vggss')
  manifest = vggss.convert(str(raw), out, num_workers=1, log=lambda _: None,
                           options=common.Options(audio_seconds=0.5))
  assert manifest.num_examples == 2 and not manifest.skipped
  records = {}
  for shard in manifest.shards:
    for record in tfrecord.iter_records(os.path.join(out, shard.file)):
      example = tfrecord.decode_example(record)
      records[example['id'].decode()] = example['boxes'].reshape(-1, 4)
  # EZ-VSL / JSA dataset.py: (np.clip(bbox, 0, 1) * 224).astype(int), gt[ymin:ymax, xmin:xmax].
  for entry in _VGGSS_ENTRIES:
    official = np.zeros((224, 224))
    for box in entry['bbox']:
      xmin, ymin, xmax, ymax = (np.clip(np.array(box), 0, 1) * 224).astype(int)
      official[ymin:ymax, xmin:xmax] = 1
    np.testing.assert_array_equal(localization.box_map(records[entry['file']]), official)
  everywhere = np.ones((224, 224), bool)  # MKC9LvRivTM_000030 has no pixel to hit: a miss
  assert localization.ciou(everywhere, localization.box_map(records['MKC9LvRivTM_000030'])) == 0
  if os.path.exists(SHARED_VGGSS):  # every published clip is kept
    clips, _ = vggss.list_clips(str(raw), SHARED_VGGSS)
    boxes = np.concatenate([np.reshape(c.boxes, (-1, 4)) for c in clips])
    assert len(clips) == 5158 and boxes.min() >= 0 and boxes.max() <= 1
    assert (boxes[:, 2:] >= boxes[:, :2]).all()


def _avsbench_split(directory, frames):
  """An AVSBench-like split: record ids `<video>_<k>` with a mask each."""
  rng = np.random.default_rng(3)
  records = []
  for record_id in frames:
    mask = np.zeros((SIZE, SIZE), np.uint8)
    y, x = rng.integers(0, SIZE // 2, 2)
    mask[y:y + 12, x:x + 12] = 255
    records.append(tfrecord.encode_example({
        'id': record_id, 'image': image_lib.encode_jpeg(
            rng.integers(0, 256, (SIZE, SIZE, 3)).astype(np.uint8)),
        'audio': tfrecord.pcm16_bytes(0.1 * rng.normal(size=8000)),
        'labels': ['x'], 'masks': [image_lib.encode_png(mask)]}))
  os.makedirs(directory)
  shard = tfrecord.write_shard(os.path.join(directory, tfrecord.shard_name('s4', 0, 1)),
                               records)
  tfrecord.write_manifest(directory, tfrecord.Manifest(
      dataset='avsbench', split='avsbench_s4', gt=tfrecord.GT_MASKS, sample_rate=16000,
      audio_seconds=0.5, classes=['x'], shards=[shard]))
  return str(directory)


def test_avsbench_fscore_groups_frames_by_the_video_of_the_record(tmp_path):
  # Video a misses frame 3: a group of 5 consecutive records would mix a and b.
  frames = ['a_1', 'a_2', 'a_4', 'a_5', 'b_1', 'b_2', 'b_3', 'b_4', 'b_5']
  directory = _avsbench_split(tmp_path / 'avsbench_s4', frames)
  config = _config(tmp_path)
  config.eval.update(splits='avsbench_s4', batch_size=4)
  model = methods.get_method('linear').build_model(config)
  shapes = train.input_shapes(config, 1, train=False)
  variables = jax.device_get(model.init(
      jax.random.key(0), *(jnp.zeros(s.shape, s.dtype) for s in shapes.values())))
  evaluator = evaluate.Evaluator(config, {'avsbench_s4': directory}, str(tmp_path / 'run'),
                                 log=lambda _: None)
  maps, masks = [], []
  for batch in pipeline.eval_dataset(config, directory, batch_size=4):
    heatmaps = evaluator._outputs(variables, batch)['heatmaps']['map']  # pylint: disable=protected-access
    maps += [localization.normalize_minmax(m) for m in heatmaps[batch['valid']]]
    masks += list(batch['masks'][batch['valid'], 0])
  maps, masks = np.stack(maps), np.stack(masks)
  videos = np.array([f[0] for f in frames])

  def per_video(count):
    return np.mean([avsbench.fscore(maps[:count][videos[:count] == v], masks[:count][
        videos[:count] == v]) for v in dict.fromkeys(videos[:count])])

  consecutive = np.mean([avsbench.fscore(maps[i:i + 5], masks[i:i + 5]) for i in (0, 5)])
  assert per_video(9) != pytest.approx(consecutive)  # the grouping matters here
  for max_examples, count in ((0, 9), (3, 3)):
    config.eval.max_examples = max_examples
    metrics = evaluator.evaluate(variables, step=None, writer=None)
    assert metrics['avsbench_s4/map/fscore'] == pytest.approx(per_video(count), rel=1e-5)


def _torchaudio_resample(waveform, orig_freq, new_freq):
  """torchaudio.transforms.Resample(orig_freq, new_freq) with its defaults, as the JSA
  release calls it: pytorch/audio src/torchaudio/functional/functional.py,
  `_get_sinc_resample_kernel` (lowpass_filter_width=6, rolloff=0.99, sinc_interp_hann,
  dtype=None: float64 index, float32 kernel) and `_apply_sinc_resample_kernel`,
  transcribed."""
  torch = pytest.importorskip('torch')
  gcd = math.gcd(orig_freq, new_freq)
  orig_freq, new_freq = orig_freq // gcd, new_freq // gcd
  lowpass_filter_width, rolloff = 6, 0.99
  base_freq = min(orig_freq, new_freq) * rolloff
  width = math.ceil(lowpass_filter_width * orig_freq / base_freq)
  idx = torch.arange(-width, width + orig_freq, dtype=torch.float64)[None, None] / orig_freq
  t = torch.arange(0, -new_freq, -1)[:, None, None] / new_freq + idx
  t *= base_freq
  t = t.clamp_(-lowpass_filter_width, lowpass_filter_width)
  window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
  t *= math.pi
  scale = base_freq / orig_freq
  kernels = torch.where(t == 0, torch.tensor(1.0).to(t), t.sin() / t)
  kernels *= window * scale
  kernels = kernels.to(dtype=torch.float32)
  x = torch.from_numpy(np.asarray(waveform, np.float32))[None]
  length = x.shape[-1]
  x = torch.nn.functional.pad(x, (width, width + orig_freq))
  resampled = torch.nn.functional.conv1d(x[:, None], kernels, stride=orig_freq)
  resampled = resampled.transpose(1, 2).reshape(1, -1)
  target_length = torch.ceil(torch.as_tensor(new_freq * length / orig_freq)).long()
  return resampled[0, :target_length].numpy()


@pytest.mark.parametrize('rate,target', [(44100, 16000), (48000, 16000), (22050, 16000),
                                         (8000, 16000)])
def test_sinc_resampler_is_torchaudios_resample(rate, target, tmp_path):
  rng = np.random.default_rng(rate)
  time = np.arange(int(0.7 * rate)) / rate
  waveform = 0.3 * np.sin(2 * np.pi * 1000 * time) + 0.2 * rng.uniform(-1, 1, time.size)
  expected = _torchaudio_resample(waveform, rate, target)
  got = audio_lib.sinc_resample(waveform, rate, target)
  assert got.shape == expected.shape == (math.ceil(waveform.size * target / rate),)
  np.testing.assert_allclose(got, expected, atol=1e-5)  # float32 kernel there
  # Reading a file at another rate uses it by default, as the releases do.
  loaded = media.load_audio(_wav(tmp_path / 'clip.wav', waveform, rate), target)
  np.testing.assert_allclose(loaded, expected, atol=1e-5)
  soxr = media.load_audio(str(tmp_path / 'clip.wav'), target, resampler='soxr_hq')
  assert np.abs(soxr - expected).max() > 1e-3  # the difference the issue measured


# 10. Minor ---------------------------------------------------------------------------------

def test_predict_checks_the_output_and_the_checkpoint_before_any_work(tmp_path):
  image, audio = _jpeg(tmp_path / 'a.jpg', 20, 20), _wav(tmp_path / 'a.wav', _tone())
  with pytest.raises(ValueError, match='^--checkpoint is empty: name a training workdir'):
    predict.predict('', str(tmp_path / 'out.png'), image=image, audio=audio)
  blocker = tmp_path / 'blocker'
  blocker.write_text('a file, not a directory')
  with pytest.raises(ValueError) as failure:  # before the (missing) checkpoint is read
    predict.predict(str(tmp_path / 'no_such_run'), str(blocker / 'out.png'), image=image,
                    audio=audio)
  assert str(failure.value).startswith(f'--output {blocker}/out.png: cannot write to {blocker} (')
  with pytest.raises(ValueError, match='no checkpoint given'):
    checkpointing.load_inference('')


def test_global_batch_copies_out_of_shared_memory():
  """Grain hands batches over in shared memory; XLA:CPU would alias them (item 6)."""

  class Shared(np.ndarray):
    pass

  value = np.arange(8, dtype=np.float32).view(Shared)
  batch = sharding.global_batch({'x': value}, sharding.make_mesh())
  value[:] = -1  # the segment is reused: the batch must not change
  np.testing.assert_array_equal(np.asarray(batch['x']), np.arange(8))

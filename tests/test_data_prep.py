"""Converters (data_prep): raw layouts -> prepared splits -> pipeline batches, skipped
inputs, resumption, videos."""

import json
import os
import subprocess
import sys

import av
import numpy as np
import pytest
import soundfile
from PIL import Image

from avloc.data import pipeline, tfrecord
from configs import jsa as jsa_config
from data_prep import common, flickr, music, vggss, vggsound

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), 'shared')
# Two entries cut from the published annotation files (../shared/metadata).
VGGSS_ENTRIES = [
    {'file': 'zpWuikVorYg_000032', 'class': 'elk bugling',
     'bbox': [[0.403125, 0.253125, 0.6, 0.75]]},
    {'file': 'gEvCUcZ6w88_000030', 'class': 'female speech, woman speaking',
     'bbox': [[0.45, 0.190625, 0.584375, 0.47812499999999997]]},
]
MUSIC_ENTRY = {
    'file': 'HnUOaSfTA6c_000_00000', 'class_src1': 'cello',
    'bbox_src1': [0.14967105263157895, 0.30833333333333335, 0.20559210526315788,
                  0.5833333333333334],
    'class_src2': 'acoustic_guitar',
    'bbox_src2': [0.48848684210526316, 0.5333333333333333, 0.3618421052631579,
                  0.18055555555555555]}
OPTIONS = common.Options(audio_seconds=1.0, sample_rate=16000)


def _frame(path, seed, size=(48, 64)):
  array = np.random.default_rng(seed).integers(0, 256, size + (3,)).astype(np.uint8)
  Image.fromarray(array).save(path, quality=90)


def _tone(seed, time):
  return 0.5 * np.sin(2 * np.pi * (300 + 100 * seed) * time)


def _wav(path, seconds=2.0, rate=44100, seed=0):
  """A stereo 44.1 kHz tone (channels of opposite sign offsets that cancel in the mean)."""
  tone = _tone(seed, np.arange(int(seconds * rate)) / rate)
  soundfile.write(path, np.stack([tone + 0.2, tone - 0.2], axis=1), rate, subtype='PCM_16')


def _raw_dir(tmp_path, ids):
  root = tmp_path / 'raw'
  (root / 'frames').mkdir(parents=True)
  (root / 'audio').mkdir()
  for i, clip_id in enumerate(ids):
    _frame(root / 'frames' / f'{clip_id}.jpg', i)
    _wav(root / 'audio' / f'{clip_id}.wav', seed=i)
  return root


def _records(directory):
  manifest = tfrecord.read_manifest(str(directory))
  return [tfrecord.decode_example(r) for shard in manifest.shards
          for r in tfrecord.iter_records(os.path.join(directory, shard.file))]


def test_vggss_round_trip_to_pipeline_batches(tmp_path):
  root = _raw_dir(tmp_path, [e['file'] for e in VGGSS_ENTRIES])
  (root / 'vggss.json').write_text(json.dumps(VGGSS_ENTRIES))
  out = tmp_path / 'vggss'
  manifest = vggss.convert(str(root), str(out), options=OPTIONS, num_workers=1)
  assert manifest.num_examples == 2 and manifest.gt == tfrecord.GT_BOXES
  assert manifest.classes == sorted(e['class'] for e in VGGSS_ENTRIES)
  records = {r['id'].decode(): r for r in _records(out)}
  first = records['zpWuikVorYg_000032']
  # The JPEG is stored as it is; audio is the middle second, mono, at 16 kHz.
  assert first['image'] == (root / 'frames' / 'zpWuikVorYg_000032.jpg').read_bytes()
  waveform = tfrecord.pcm16_waveform(first['audio'])
  expected = _tone(0, 0.5 + np.arange(16000) / 16000)  # seconds 0.5 to 1.5 of 2
  np.testing.assert_allclose(waveform, expected, atol=5e-3)
  config = jsa_config.get_config('synthetic')
  config.data.update(num_workers=0)
  batch = next(iter(pipeline.eval_dataset(config, str(out), batch_size=2)))
  np.testing.assert_allclose(batch['boxes'][0, 0], VGGSS_ENTRIES[0]['bbox'][0], rtol=1e-6)
  assert list(batch['label']) == [manifest.classes.index(e['class']) for e in VGGSS_ENTRIES]


_ANNOTATION_READERS = [
    (vggss.read_annotations, 'VGG-SS annotation file', 'not a vggss.json annotation list',
     [{'file': 'a', 'class': 'dog'}]),  # no 'bbox'
    (music.read_annotations, 'MUSIC annotation file', 'not a MUSIC annotation list',
     [{'file': 'a', 'class_src2': 'cello'}]),  # no first source
    (flickr.read_boxes, 'Flickr-SoundNet test annotations', r'expected \{"boxes":',
     {'box': {}}),
]


@pytest.mark.parametrize('read,what,expected,wrong', _ANNOTATION_READERS)
def test_annotation_files_that_are_missing_invalid_or_malformed_are_named(
    tmp_path, read, what, expected, wrong):
  path = tmp_path / 'annotations.json'
  with pytest.raises(FileNotFoundError, match=f'{path}: {what} not found'):
    read(str(path))
  path.write_text('[{"file": ')
  with pytest.raises(ValueError, match=f'{path}: {expected} .*JSONDecodeError'):
    read(str(path))
  path.write_text(json.dumps(wrong))
  with pytest.raises(ValueError, match=f'{path}: {expected} .*KeyError'):
    read(str(path))


def test_missing_and_corrupt_inputs_are_skipped_with_their_reason(tmp_path):
  ids = ['a', 'b', 'c', 'd']
  root = _raw_dir(tmp_path, ids)
  os.remove(root / 'audio' / 'b.wav')
  (root / 'frames' / 'c.jpg').write_bytes(b'\xff\xd8 truncated')
  (root / 'audio' / 'd.wav').write_bytes(b'RIFF nonsense')
  entries = [{'file': i, 'class': 'x', 'bbox': [[0.1, 0.1, 0.5, 0.5]]} for i in ids]
  (root / 'vggss.json').write_text(json.dumps(entries))
  logs = []
  manifest = vggss.convert(str(root), str(tmp_path / 'out'), options=OPTIONS, num_workers=1,
                           log=logs.append)
  assert manifest.num_examples == 1
  reasons = {s['id']: s['reason'] for s in manifest.skipped}
  assert 'no audio' in reasons['b']
  assert reasons['c'].startswith(f'{root}/frames/c.jpg: cannot decode image')
  assert reasons['d'].startswith(f'{root}/audio/d.wav: cannot decode')
  assert any('skipped b: ' in line for line in logs)


def test_every_input_skipped_is_an_error(tmp_path):
  root = _raw_dir(tmp_path, [])
  (root / 'vggss.json').write_text(json.dumps(VGGSS_ENTRIES))
  with pytest.raises(ValueError, match='every input was skipped'):
    vggss.convert(str(root), str(tmp_path / 'out'), options=OPTIONS, num_workers=1,
                  log=lambda _: None)


def test_a_rerun_keeps_finished_shards_and_rewrites_the_rest(tmp_path):
  ids = [f'clip{i}' for i in range(6)]
  root = _raw_dir(tmp_path, ids)
  out = tmp_path / 'out'
  kwargs = dict(options=OPTIONS, num_shards=3, num_workers=1, log=lambda _: None)
  vggsound.convert(str(root), str(out), split='train', **kwargs)
  shards = sorted(p for p in os.listdir(out) if p.endswith('.tfrecord'))
  kept = os.stat(out / shards[0]).st_mtime_ns
  os.remove(out / shards[1].replace('.tfrecord', '.index.json'))  # an interrupted shard
  logs = []
  manifest = vggsound.convert(str(root), str(out), split='train', **{**kwargs, 'log': logs.append})
  assert os.stat(out / shards[0]).st_mtime_ns == kept
  assert any('2 of 3 shards already written; resuming' in line for line in logs)
  assert manifest.num_examples == 6 and len(_records(out)) == 6


def test_vggsound_labels_and_id_lists(tmp_path):
  root = _raw_dir(tmp_path, ['abc_000010', 'xyz_000020', 'unused_000000'])
  (root / 'ids.txt').write_text('abc_000010\nxyz_000020\n')
  (root / 'vggsound.csv').write_text('abc,10,dog barking,train\nxyz,20,car engine,test\n')
  manifest = vggsound.convert(str(root), str(tmp_path / 'out'), ids=str(root / 'ids.txt'),
                              labels=str(root / 'vggsound.csv'), options=OPTIONS,
                              num_workers=1, log=lambda _: None)
  assert manifest.num_examples == 2 and manifest.gt == tfrecord.GT_NONE
  assert {r['id'].decode(): r['labels'] for r in _records(tmp_path / 'out')} == {
      'abc_000010': [b'dog barking'], 'xyz_000020': [b'car engine']}


def test_music_duet_boxes_are_converted_from_normalized_xywh(tmp_path):
  root = _raw_dir(tmp_path, [MUSIC_ENTRY['file']])
  (root / 'music_duet.json').write_text(json.dumps([MUSIC_ENTRY]))
  (root / 'masks').mkdir()
  for k in (1, 2):
    mask = np.zeros((48, 64), np.uint8)
    mask[10 * k:10 * k + 5] = 255
    Image.fromarray(mask).save(root / 'masks' / f'{MUSIC_ENTRY["file"]}_src{k}.png')
  manifest = music.convert(str(root), str(tmp_path / 'out'), options=OPTIONS, num_workers=1,
                           log=lambda _: None)
  assert manifest.gt == tfrecord.GT_MULTISOURCE
  record = _records(tmp_path / 'out')[0]
  x, y, w, h = MUSIC_ENTRY['bbox_src2']
  np.testing.assert_allclose(record['boxes'][4:], [x, y, x + w, y + h], rtol=1e-6)
  assert list(record['box_groups']) == [0, 1] and record['labels'] == [b'cello',
                                                                         b'acoustic_guitar']
  config = jsa_config.get_config('synthetic')
  config.data.update(num_workers=0)
  config.data.image.size = 160
  batch = next(iter(pipeline.eval_dataset(config, str(tmp_path / 'out'), batch_size=1)))
  assert batch['num_sources'][0] == 2 and batch['masks'].shape == (1, 2, 160, 160)
  assert batch['masks'][0, 1, 70:73].all() and not batch['masks'][0, 1, 20:40].any()


def _write_video(path, seconds=2.0, fps=10, rate=16000):
  """An mp4 (mpeg4 + aac) whose frame i is uniformly grey level 20 * i."""
  with av.open(str(path), 'w') as container:
    video = container.add_stream('mpeg4', rate=fps)
    video.width, video.height, video.pix_fmt = 64, 48, 'yuv420p'
    audio = container.add_stream('aac', rate=rate)
    audio.layout = 'mono'
    for i in range(int(seconds * fps)):
      frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 10 * i, np.uint8), format='rgb24')
      container.mux(video.encode(frame))
    container.mux(video.encode())
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate)).astype(np.float32)
    for start in range(0, tone.size, 1024):
      frame = av.AudioFrame.from_ndarray(tone[None, start:start + 1024], format='flt',
                                         layout='mono')
      frame.sample_rate = rate
      container.mux(audio.encode(frame))
    container.mux(audio.encode())


def test_videos_give_the_middle_frame_and_their_audio_track(tmp_path):
  root = tmp_path / 'raw'
  (root / 'video').mkdir(parents=True)
  _write_video(root / 'video' / 'v1.mp4')
  manifest = vggsound.convert(str(root), str(tmp_path / 'out'), options=OPTIONS,
                              num_workers=1, log=lambda _: None)
  assert manifest.num_examples == 1
  record = _records(tmp_path / 'out')[0]
  from avloc.data import image  # pylint: disable=g-import-not-at-top
  frame = image.decode_image(record['image'])
  assert abs(frame.mean() - 100) < 12  # frame 10 of 20 (1.0 s of 2.0 s)
  waveform = tfrecord.pcm16_waveform(record['audio'])
  assert waveform.shape == (16000,)
  peak = np.argmax(np.abs(np.fft.rfft(waveform)))
  assert abs(peak - 440) <= 2  # 1 s window: bins are 1 Hz


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, 'real_samples', 'videos')),
                    reason='../shared/real_samples is not available')
def test_real_youtube_clips_decode():
  from avloc.data import media  # pylint: disable=g-import-not-at-top
  directory = os.path.join(SHARED, 'real_samples', 'videos')
  path = os.path.join(directory, sorted(os.listdir(directory))[0])
  frame, waveform = media.read_video(path, 16000)
  assert frame.ndim == 3 and frame.shape[2] == 3 and frame.dtype == np.uint8
  assert 4.0 * 16000 < waveform.shape[0] < 6.0 * 16000 and np.abs(waveform).max() > 0.01


def test_command_line_converts_and_requires_its_flags(tmp_path):
  root = _raw_dir(tmp_path, [e['file'] for e in VGGSS_ENTRIES])
  (root / 'vggss.json').write_text(json.dumps(VGGSS_ENTRIES))
  run = lambda *args: subprocess.run(  # noqa: E731
      [sys.executable, '-m', 'data_prep.vggss', *args], cwd=REPO, capture_output=True,
      text=True, timeout=300, check=False)
  missing = run(f'--input_dir={root}')
  assert missing.returncode != 0 and '--output_dir' in missing.stderr
  done = run(f'--input_dir={root}', f'--output_dir={tmp_path}/out', '--audio_seconds=1',
             '--num_workers=1')
  assert done.returncode == 0, done.stderr
  assert tfrecord.read_manifest(str(tmp_path / 'out')).num_examples == 2


FLICKR_BOXES = {'10000130166': [[69, 1, 216, 256], [85, 1, 186, 203], [40, 1, 221, 254]],
                '10007936344': [[31, 30, 217, 202], [149, 35, 217, 209], [36, 39, 126, 198],
                                [36, 29, 217, 215]]}


@pytest.mark.parametrize('as_xml', [False, True])
def test_flickr_test_boxes_keep_one_group_per_annotator(tmp_path, as_xml):
  root = _raw_dir(tmp_path, list(FLICKR_BOXES))
  (root / 'flickr_test.csv').write_text('10000130166,202\n10007936344,0\n')
  if as_xml:
    annotations = root / 'Annotations'
    annotations.mkdir()
    for clip_id, boxes in FLICKR_BOXES.items():
      body = ''.join('<bbox>' + ''.join(f'<v{i}>{v}</v{i}>' for i, v in enumerate(b)) +
                     '</bbox>' for b in boxes)
      (annotations / f'{clip_id}.xml').write_text(f'<annotation>{body}</annotation>')
  else:
    annotations = root / 'boxes.json'
    annotations.write_text(json.dumps({'coords': 'xyxy 256', 'boxes': FLICKR_BOXES}))
  manifest = flickr.convert(str(root), str(tmp_path / 'out'), ids=str(root / 'flickr_test.csv'),
                            annotations=str(annotations), options=OPTIONS, num_workers=1,
                            log=lambda _: None)
  assert manifest.gt == tfrecord.GT_CONSENSUS and manifest.num_examples == 2
  record = {r['id'].decode(): r for r in _records(tmp_path / 'out')}['10007936344']
  np.testing.assert_allclose(record['boxes'].reshape(-1, 4),
                             np.asarray(FLICKR_BOXES['10007936344']) / 256, rtol=1e-6)
  assert list(record['box_groups']) == [0, 1, 2, 3]


def _png(path, array):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path)


@pytest.mark.parametrize('subset', ['s4', 'ms3'])
def test_avsbench_frames_become_records_with_their_masks(tmp_path, subset):
  from data_prep import avsbench  # pylint: disable=g-import-not-at-top
  root = tmp_path / 'raw'
  name = '0d9u2CymIxc' if subset == 's4' else 'xv7eM6-UmkY_36'
  if subset == 's4':
    (root / 's4_meta_data.csv').parent.mkdir(parents=True)
    (root / 's4_meta_data.csv').write_text(
        f'name,start,category,split\n-_wznbUu3DY,0,helicopter,train\n{name},0,helicopter,test\n')
    folder, frame = f'test/helicopter/{name}', lambda k: f'test/helicopter/{name}/{name}_{k}'
    audio = root / 'audio_wav' / 'test' / 'helicopter' / f'{name}.wav'
  else:
    (root / 'ms3_meta_data.csv').parent.mkdir(parents=True)
    (root / 'ms3_meta_data.csv').write_text(f'video_id,split\njlhuZfcw61w,train\n{name},test\n')
    folder, frame = f'test/{name}', lambda k: f'{name}/{name}.mp4_{k}'
    audio = root / 'audio_wav' / 'test' / f'{name}.wav'
  audio.parent.mkdir(parents=True)
  _wav(audio, seconds=5.0)
  for k in range(1, 6):
    _png(root / 'visual_frames' / f'{frame(k)}.png', np.full((30, 40, 3), 40 * k, np.uint8))
    mask = np.zeros((30, 40), np.uint8)
    mask[:, :8 * k] = 255
    if k != 3 or subset == 's4':  # MS3: frame 3 lacks its mask -> skipped and reported
      _png(root / 'gt_masks' / folder / f'{name}_{k}.png', mask)
  manifest = avsbench.convert(str(root), str(tmp_path / 'out'), subset=subset, options=OPTIONS,
                              num_workers=1, log=lambda _: None)
  assert manifest.gt == tfrecord.GT_MASKS
  assert manifest.num_examples == (5 if subset == 's4' else 4)
  if subset == 'ms3':
    assert manifest.skipped[0]['id'] == f'{name}_3' and 'file not found' in (
        manifest.skipped[0]['reason'])
  config = jsa_config.get_config('synthetic')
  config.data.update(num_workers=0)
  config.data.image.size = 40
  batch = next(iter(pipeline.eval_dataset(config, str(tmp_path / 'out'), batch_size=5)))
  first = batch['masks'][0, 0]
  assert first[:, :8].all() and not first[:, 8:].any()
  assert abs(int(batch['image'][1].mean()) - 80) <= 2  # frame 2
  assert batch['label'][0] == (0 if subset == 's4' else -1)

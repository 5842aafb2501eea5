"""The synthetic benchmark (data_prep.synthetic): determinism, exact ground truth, the
audio signature, caching, config errors."""

import json
import os

import numpy as np
import pytest

from avloc import config as config_lib
from avloc.data import audio, tfrecord
from data_prep import synthetic


def _cfg(**overrides):
  cfg = config_lib.synthetic_config()
  cfg.update(train_size=6, test_size=4, multi_test_size=3, image_size=64, audio_seconds=0.5)
  cfg.update(overrides)
  return cfg


def test_clips_are_deterministic_for_a_seed():
  cfg = _cfg()
  a = synthetic.render_clip(cfg, np.random.default_rng(3), [1, 4], 2)
  b = synthetic.render_clip(cfg, np.random.default_rng(3), [1, 4], 2)
  c = synthetic.render_clip(cfg, np.random.default_rng(4), [1, 4], 2)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(a['image'], c['image'])


def test_boxes_are_the_tight_boxes_of_the_visible_masks():
  cfg = _cfg(max_distractors=2)
  for seed in range(10):
    clip = synthetic.render_clip(cfg, np.random.default_rng(seed), [0, 5, 7], 2)
    assert clip['masks'].shape == (3, 64, 64) and clip['boxes'].shape == (3, 4)
    assert not (clip['masks'][0] & clip['masks'][1]).any()
    for mask, (x0, y0, x1, y1) in zip(clip['masks'], clip['boxes']):
      ys, xs = np.nonzero(mask)
      np.testing.assert_allclose([x0, y0, x1, y1],
                                 [xs.min() / 64, ys.min() / 64, (xs.max() + 1) / 64,
                                  (ys.max() + 1) / 64])


def test_the_sounding_class_is_audible_at_its_fundamental():
  cfg = _cfg(offscreen_prob=0.0, noise_level=0.05, audio_seconds=1.0)
  for c in (0, 5, 11):
    waveform = synthetic.render_clip(cfg, np.random.default_rng(c), [c], 2)['waveform']
    spectrum = np.abs(np.fft.rfft(waveform))  # 1 Hz bins
    f0 = 150.0 * 2 ** (c / 4)
    assert abs(np.argmax(spectrum) - f0) <= 0.04 * f0


def test_distractors_are_silent_objects_of_other_classes_and_absent_when_alone():
  cfg = _cfg(max_distractors=2)
  counts = []
  for seed in range(12):
    crowded = synthetic.render_clip(cfg, np.random.default_rng(seed), [3], 2)
    assert 3 not in crowded['distractors'] and len(set(crowded['distractors'])) <= 2
    counts.append(len(crowded['distractors']))
    alone = synthetic.render_clip(cfg, np.random.default_rng(seed), [3], 0)
    assert alone['distractors'] == [] and alone['masks'].shape == (1, 64, 64)
  assert set(counts) == {0, 1, 2}


def test_prepare_converts_every_split_once_and_then_reuses_it(tmp_path, monkeypatch):
  cfg = _cfg()
  logs = []
  dirs = synthetic.prepare(cfg, str(tmp_path), log=logs.append)
  assert sorted(dirs) == sorted(synthetic.SPLITS)
  counts = {name: tfrecord.read_manifest(d).num_examples for name, d in dirs.items()}
  assert counts == {'synthetic_train': 6, 'synthetic_test': 4, 'synthetic_duet': 3,
                    'synthetic_trio': 3, 'synthetic_mixed': 3, 'synthetic_alone': 4}
  assert tfrecord.read_manifest(dirs['synthetic_trio']).gt == tfrecord.GT_MULTISOURCE
  assert tfrecord.read_manifest(dirs['synthetic_test']).gt == tfrecord.GT_BOXES
  assert not os.path.exists(os.path.join(synthetic.cache_dir(cfg, str(tmp_path)), 'raw'))
  record = tfrecord.decode_example(next(tfrecord.iter_records(
      os.path.join(dirs['synthetic_trio'], tfrecord.read_manifest(dirs['synthetic_trio'])
                   .shards[0].file))))
  assert len(record['labels']) == 3 and len(record['masks']) == 3
  assert list(record['box_groups']) == [0, 1, 2]
  assert tfrecord.pcm16_waveform(record['audio']).shape == (8000,)
  monkeypatch.setattr(synthetic, 'generate', lambda *a, **k: pytest.fail('regenerated'))
  assert synthetic.prepare(cfg, str(tmp_path), log=logs.append) == dirs
  assert synthetic.cache_dir(_cfg(seed=1), str(tmp_path)) != synthetic.cache_dir(cfg, str(tmp_path))


def test_prepare_makes_only_the_requested_splits_and_adds_missing_ones_later(
    tmp_path, monkeypatch):
  cfg, generated = _cfg(), []
  generate = synthetic.generate

  def recording_generate(cfg, output_dir, splits, **kwargs):
    generated.append(list(splits))
    return generate(cfg, output_dir, splits, **kwargs)

  monkeypatch.setattr(synthetic, 'generate', recording_generate)
  first = synthetic.prepare(cfg, str(tmp_path), splits=('synthetic_test',), log=lambda _: None)
  assert list(first) == ['synthetic_test']
  manifest = os.path.join(first['synthetic_test'], tfrecord.MANIFEST_NAME)
  written = os.path.getmtime(manifest)
  both = synthetic.prepare(cfg, str(tmp_path), splits=('synthetic_duet', 'synthetic_test'),
                           log=lambda _: None)
  assert both == {**first, 'synthetic_duet': os.path.join(synthetic.cache_dir(
      cfg, str(tmp_path)), 'synthetic_duet')}
  assert generated == [['synthetic_test'], ['synthetic_duet']]
  assert os.path.getmtime(manifest) == written
  assert tfrecord.read_manifest(both['synthetic_duet']).num_examples == 3


def test_unknown_split_is_named(tmp_path):
  with pytest.raises(ValueError, match=r"synthetic splits \['synthetic_tset'\] do not exist"):
    synthetic.prepare(_cfg(), str(tmp_path), splits=('synthetic_tset',))


def test_raw_annotations_follow_the_published_formats(tmp_path):
  cfg = _cfg()
  dirs = synthetic.generate(cfg, str(tmp_path), splits=('synthetic_test', 'synthetic_duet'),
                            num_workers=1, log=lambda _: None)
  vggss = json.load(open(os.path.join(dirs['synthetic_test'], 'vggss.json')))
  assert set(vggss[0]) == {'file', 'class', 'bbox'} and len(vggss[0]['bbox'][0]) == 4
  duet = json.load(open(os.path.join(dirs['synthetic_duet'], 'music_duet.json')))
  assert {'file', 'class_src1', 'bbox_src1', 'class_src2', 'bbox_src2'} == set(duet[0])
  x, y, w, h = duet[0]['bbox_src1']
  assert 0 <= x and 0 <= y and x + w <= 1 and y + h <= 1  # normalized xywh


@pytest.mark.parametrize('field,value,message', [
    ('num_classes', 3, r'config\.data\.synthetic\.num_classes must be >= 4, got 3'),
    ('max_distractors', 10, r'config\.data\.synthetic\.max_distractors must leave 3 classes'),
    ('noise_level', 2.0, r'config\.data\.synthetic\.noise_level must be in \[0, 1\], got 2\.0'),
])
def test_bad_settings_fail_naming_the_field(tmp_path, field, value, message):
  with pytest.raises(config_lib.ConfigError, match=message):
    synthetic.prepare(_cfg(**{field: value}), str(tmp_path))


def test_spectrogram_of_a_synthetic_clip_has_the_configured_shape():
  cfg = _cfg(audio_seconds=1.0)
  waveform = synthetic.render_clip(cfg, np.random.default_rng(0), [2], 2)['waveform']
  assert audio.log_spectrogram(waveform, config_lib.audio_config(1.0)).shape == (257, 101)


def test_both_methods_cpu_sized_variants_train_on_one_generated_set(tmp_path):
  from configs import jsa, noprior  # pylint: disable=g-import-not-at-top
  configs = [module.get_config('synthetic') for module in (jsa, noprior)]
  assert len({synthetic.cache_dir(c.data.synthetic, str(tmp_path)) for c in configs}) == 1
  for c in configs:
    assert c.data.audio.seconds == c.data.synthetic.audio_seconds
    assert c.data.image.size <= c.data.synthetic.image_size

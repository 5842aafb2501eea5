"""The Colab notebook (colab/avloc_demo.ipynb) runs headless (nbclient) on tiny settings:
every cell on exported models (default suite) and with both trainings (slow); its install
and upload cells on their own, with pip and Colab's upload replaced."""

import importlib.util
import os
import subprocess
import sys
import types

import nbformat
import pytest
from nbclient import NotebookClient

from avloc import predict
from tests import exports

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, 'colab', 'avloc_demo.ipynb')
TINY = dict(TRAIN_SIZE=16, TEST_SIZE=12, MULTI_TEST_SIZE=4, IMAGE_SIZE=64, AUDIO_SECONDS=0.5,
            WIDTH=4, DIM=16, BATCH_SIZE=8, EPOCHS=1, NOPRIOR_EPOCHS=1, MAX_STEPS=2,
            NUM_EXAMPLES=2)


def _execute(tmp_path, monkeypatch, overrides: dict) -> nbformat.NotebookNode:
  """Runs the notebook with `overrides` in a cell after its `parameters` cell (as
  papermill injects them), data and runs under tmp_path, this checkout importable."""
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  index = next(i for i, cell in enumerate(notebook.cells)
               if 'parameters' in cell.metadata.get('tags', []))
  overrides = dict(overrides, DATA_ROOT=str(tmp_path / 'data'), WORKDIR=str(tmp_path / 'runs'))
  notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(
      '\n'.join(f'{k} = {v!r}' for k, v in overrides.items()),
      metadata={'tags': ['injected-parameters']}))
  monkeypatch.setenv('PYTHONPATH', os.pathsep.join(
      p for p in (REPO, os.environ.get('PYTHONPATH')) if p))
  monkeypatch.delenv('XLA_FLAGS', raising=False)  # one device, as a Colab CPU runtime
  # Kernel 'python3' runs this interpreter: jupyter_client replaces the spec's 'python'
  # by sys.executable, and ipykernel provides the spec where none is installed.
  NotebookClient(notebook, timeout=900, kernel_name='python3',
                 resources={'metadata': {'path': str(tmp_path)}}).execute()
  return notebook


def _check_outputs(notebook) -> str:
  """Asserts no error output and the three figures; returns the printed text."""
  outputs = [o for cell in notebook.cells if cell.cell_type == 'code' for o in cell.outputs]
  assert not [o for o in outputs if o.output_type == 'error']
  figures = [o for o in outputs if 'image/png' in o.get('data', {})]
  assert len(figures) == 3  # JSA maps, retrieval, NoPrior masks
  text = ''.join(o.get('text', '') for o in outputs if o.output_type == 'stream')
  assert 'skipping the installation' in text and 'upload skipped' in text
  assert 'Recall@K' in text and '(sources, objects found)' in text
  return text


def test_notebook_runs_every_cell_on_exported_models(tmp_path, monkeypatch):
  checkpoints = dict(
      JSA_CHECKPOINT=exports.write_export(exports.tiny_jsa(), tmp_path / 'jsa'),
      NOPRIOR_CHECKPOINT=exports.write_export(exports.tiny_noprior(), tmp_path / 'noprior'))
  _check_outputs(_execute(tmp_path, monkeypatch, dict(TINY, **checkpoints)))
  assert not os.path.exists(tmp_path / 'runs')  # nothing trained


@pytest.mark.slow
def test_notebook_trains_both_methods_and_shows_their_maps(tmp_path, monkeypatch):
  text = _check_outputs(_execute(tmp_path, monkeypatch, TINY))
  assert 'jsa step 2 [iqr]' in text and 'noprior step 2' in text
  for method in ('jsa', 'noprior'):
    assert os.listdir(tmp_path / 'runs' / method / 'export') == ['2']


def _cell(first_line: str) -> str:
  """The source of the notebook's code cell that starts with `first_line`."""
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  return next(cell.source for cell in notebook.cells
              if cell.cell_type == 'code' and cell.source.startswith(first_line))


def test_install_cell_installs_the_checkout_around_it_or_avloc_source(monkeypatch, tmp_path):
  commands = []
  monkeypatch.setattr(subprocess, 'run', lambda command, check: commands.append(command))
  monkeypatch.setattr(importlib.util, 'find_spec', lambda name: None)  # not installed
  monkeypatch.delenv('AVLOC_SOURCE', raising=False)
  cell = _cell('# Install avloc')
  pip = [sys.executable, '-m', 'pip', 'install', '-q']
  monkeypatch.chdir(os.path.join(REPO, 'colab'))  # Jupyter started in a clone's colab/
  exec(cell, {'AVLOC_SOURCE': ''})  # pylint: disable=exec-used
  exec(cell, {'AVLOC_SOURCE': 'https://github.com/owner/avloc.git'})  # pylint: disable=exec-used
  assert commands == [pip + [REPO], pip + ['git+https://github.com/owner/avloc.git']]
  monkeypatch.chdir(tmp_path)  # no checkout around, nothing installed, no source given
  with pytest.raises(RuntimeError, match='set AVLOC_SOURCE in the parameters cell'):
    exec(cell, {'AVLOC_SOURCE': ''})  # pylint: disable=exec-used


@pytest.mark.parametrize('uploaded,expected', [
    ({'dog.jpg': b'jpeg'}, None),
    ({'dog.jpg': b'jpeg', 'bark.wav': b'wav'},
     dict(image='uploads/dog.jpg', audio='uploads/bark.wav')),
    ({'clip.mp4': b'mp4', 'dog.jpg': b'jpeg'}, dict(video='uploads/clip.mp4')),
])
def test_upload_cell_predicts_a_pair_or_a_video_and_asks_for_what_is_missing(
    uploaded, expected, monkeypatch, tmp_path, capsys):
  colab = types.ModuleType('google.colab')
  colab.files = types.SimpleNamespace(upload=lambda: uploaded)
  monkeypatch.setitem(sys.modules, 'google.colab', colab)
  monkeypatch.chdir(tmp_path)
  calls = []

  def fake_predict(checkpoint, output, localizer, **inputs):
    calls.append(inputs)
    return predict.Summary()

  namespace = dict(os=os, jsa=None, display=None, ImageFile=None,
                   predict=types.SimpleNamespace(input_kind=predict.input_kind,
                                                 predict=fake_predict))
  exec(_cell('try:\n  from google.colab import files'), namespace)  # pylint: disable=exec-used
  assert calls == ([expected] if expected else [])
  assert sorted(os.listdir(tmp_path / 'uploads')) == sorted(uploaded)
  if expected is None:
    assert 'Upload an image and an audio file, or a video; got: dog.jpg' in capsys.readouterr().out

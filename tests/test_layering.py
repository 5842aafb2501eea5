"""Imports point one way (the design card's layering), read from every module's source,
imports inside functions included: models and metrics import no losses, data, trainer or
converter; the library imports no data_prep script and none of its command lines; the
config blocks import no model."""

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMAND_LINES = ('avloc.main', 'avloc.convert', 'avloc.predict')


def _modules() -> dict[str, set[str]]:
  """{'avloc.x.y': the avloc / data_prep / configs modules it imports}."""
  imports = {}
  for folder, _, files in os.walk(os.path.join(REPO, 'avloc')):
    for name in files:
      if not name.endswith('.py'):
        continue
      path = os.path.join(folder, name)
      module = os.path.relpath(path, REPO)[:-3].replace(os.sep, '.').removesuffix('.__init__')
      found = set()
      for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
          found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
          found.update(f'{node.module}.{alias.name}' for alias in node.names)
          found.add(node.module)
      imports[module] = {n for n in found if n.split('.')[0] in ('avloc', 'data_prep', 'configs')}
  return imports


IMPORTS = _modules()


def _offending(prefixes, forbidden):
  return sorted((module, name) for module, names in IMPORTS.items()
                if module.startswith(prefixes) for name in names
                if name.startswith(forbidden))


def test_the_modules_were_found():
  assert {'avloc.train', 'avloc.models.noprior', 'avloc.losses.noprior'} <= set(IMPORTS)


@pytest.mark.parametrize('layer', ['avloc.models', 'avloc.metrics'])
def test_models_and_metrics_import_no_losses_data_trainer_or_converter(layer):
  assert not _offending((layer,), ('avloc.losses', 'avloc.data', 'avloc.train',
                                   'avloc.weights', 'avloc.convert', 'avloc.evaluate',
                                   'avloc.experiment', 'avloc.config'))


def test_the_library_imports_no_data_prep_script_and_no_config_file():
  assert not _offending(('avloc',), ('data_prep', 'configs'))


def test_no_module_imports_a_command_line():
  assert not [(module, name) for module, names in IMPORTS.items() for name in names
              if name.startswith(COMMAND_LINES) and module not in COMMAND_LINES]


def test_config_blocks_import_no_model_and_shared_leaves_import_nothing():
  assert not _offending(('avloc.config',), ('avloc.models',))
  assert not IMPORTS['avloc.constants']
  assert not IMPORTS['avloc.paths']

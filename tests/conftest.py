"""Test session set-up: 4 fake CPU devices (multi-device code runs data-parallel in every
test) and absl flags marked parsed (Grain worker processes require it)."""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=4')

from absl import flags  # noqa: E402  pylint: disable=g-import-not-at-top

flags.FLAGS.mark_as_parsed()

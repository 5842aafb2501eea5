"""Runs a benchmark script with its heavy work stubbed, in a subprocess (the scripts define
absl flags that other modules define too), and reads the tables it prints."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_stubbed(code: str, *args: str, env: dict | None = None) -> tuple[list, list[str]]:
  """Runs `code` (it stubs a script's work, runs the script and prints 'CALLS <json>' of
  what the stubs recorded) with `args`, in the repository root; returns the recorded
  calls and the lines of its output."""
  result = subprocess.run([sys.executable, '-c', code, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  return json.loads(next(line for line in lines if line.startswith('CALLS '))[6:]), lines


def printed_table(lines: list[str], title: str) -> tuple[str, dict[str, dict[str, str]]]:
  """The table that `benchmarks/common.print_table` printed under the first line starting
  with `title`: that line, and the rows by their first cell, each {column: cell}."""
  start = next(i for i, line in enumerate(lines) if line.startswith(title))
  header = [cell.strip() for cell in lines[start + 1].split('|')]
  rows = {}
  for line in lines[start + 3:]:  # after the title, the header and the rule
    if '|' not in line:
      break
    cells = [cell.strip() for cell in line.split('|')]
    rows[cells[0]] = dict(zip(header, cells))
  return lines[start], rows

"""Tests across hosts made of network namespaces (see hosts.py)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

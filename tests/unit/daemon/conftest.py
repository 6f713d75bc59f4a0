"""Unit tests of the daemon's core (no Redis, no workers): daemon_fakes.py is importable beside them."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

"""In-process tests of the daemon's parts on a real embedded Redis (see inprocess_harness.py)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

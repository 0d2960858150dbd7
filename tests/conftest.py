import sys
from pathlib import Path

# Let tests import the shared helpers module as `helpers`.
sys.path.insert(0, str(Path(__file__).parent))

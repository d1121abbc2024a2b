import os

# Tests run on one CPU device unless a test starts its own subprocess.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

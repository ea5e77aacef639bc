"""GPU tests (pytest marker `gpu`): skipped with a stated reason where CUDA is missing."""

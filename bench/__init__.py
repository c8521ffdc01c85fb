"""srdistill's benchmarks: ``python -m bench all`` (or one name) runs them and rewrites BENCHMARKS.md."""

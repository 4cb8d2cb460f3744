"""Entry points: absl launchers and shell scripts."""

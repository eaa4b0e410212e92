"""``python -m herd`` runs the herd CLI (same as the ``herd`` console script)."""

from herd.cli import app

if __name__ == "__main__":
    app(prog_name="herd")

"""Start the TLDR Voice desktop app: `python main.py`."""

from app.main_window import run

if __name__ == "__main__":
    raise SystemExit(run())

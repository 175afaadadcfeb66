"""ARPG Studio's Gradio app: `create_demo()` builds it; the repository's `app.py` launches it."""

from app.ui import create_demo

__all__ = ["create_demo"]

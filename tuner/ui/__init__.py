"""The Gradio app: the only package that imports gradio. ``build_app(lang)`` returns the Blocks."""

from tuner.ui.app import build_app

__all__ = ["build_app"]

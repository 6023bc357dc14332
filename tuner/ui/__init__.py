"""The Gradio app: the only package that imports gradio. ``tuner.ui.app.build_app(lang)`` returns the
Blocks; ``tuner.ui.launch`` starts it (``tuner app``, ``python app.py``). Importing this package alone
imports no gradio, so the CLI can offer the ``app`` verb without paying for it."""

"""UI strings in English and Chinese, and components that can be relabelled after the page loads.

The strings live in one flat dict per language (text_en.py, text_zh.py) keyed by ``tab.thing``;
a missing Chinese string falls back to English. The page is built in the launch language; a page
opened with ``?lang=zh`` (or ``?lang=en``) is relabelled by one load event that updates every
component built through :class:`Texts`.
"""

from __future__ import annotations

from tuner.ui.text_en import STRINGS as EN
from tuner.ui.text_zh import STRINGS as ZH

LANGS = {"en": EN, "zh": ZH}
DEFAULT_LANG = "en"


def norm_lang(lang: str | None) -> str:
    """``zh-CN`` -> ``zh``; unknown -> English."""
    code = (lang or "").lower().split("-")[0].split("_")[0]
    return code if code in LANGS else DEFAULT_LANG


def tr(lang: str | None, key: str, **fmt) -> str:
    """The text of ``key`` in ``lang`` (English when missing), formatted with ``fmt``.

    >>> tr("zh", "status.ok")
    '完成'
    """
    table = LANGS[norm_lang(lang)]
    text = table.get(key)
    if text is None:
        # Config keys are labelled with their YAML names (the same in every language) unless a
        # string says more, e.g. what 0 means.
        text = EN.get(key, key.removeprefix("cfg."))
    return text.format(**fmt) if fmt else text


def has(key: str) -> bool:
    return key in EN


class Texts:
    """Makes components labelled in one language and remembers which keys each one uses."""

    def __init__(self, lang: str):
        self.lang = norm_lang(lang)
        self.bound: list[tuple[object, dict[str, str]]] = []

    def __call__(self, key: str, **fmt) -> str:
        return tr(self.lang, key, **fmt)

    def make(self, cls, key: str, **kwargs):
        """``cls(label=..., info=..., placeholder=...)`` from ``key``, ``key.info``, ``key.ph``."""
        attrs = {"label": key}
        if has(f"{key}.info") and _accepts(cls, "info"):
            attrs["info"] = f"{key}.info"
        if has(f"{key}.ph") and _accepts(cls, "placeholder"):
            attrs["placeholder"] = f"{key}.ph"
        for attr, k in attrs.items():
            kwargs.setdefault(attr, self(k))
        return self.bind(cls(**kwargs), **attrs)

    def value(self, cls, key: str, **kwargs):
        """A component whose *value* is the text (Button, Markdown)."""
        return self.bind(cls(self(key), **kwargs), value=key)

    def bind(self, component, **attrs: str):
        self.bound.append((component, attrs))
        return component

    def components(self) -> list:
        return [c for c, _ in self.bound]

    def relabel(self, lang: str | None) -> list:
        """One update per bound component, in ``lang``; nothing to change when it is the build language."""
        import gradio as gr

        lang = norm_lang(lang)
        if lang == self.lang:
            return [gr.skip() for _ in self.bound]
        return [gr.update(**{attr: tr(lang, key) for attr, key in attrs.items()}) for _, attrs in self.bound]


def _accepts(cls, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return False

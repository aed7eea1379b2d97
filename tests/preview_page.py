"""Read the parts of a /preview page a test checks from its HTML, as served or as Chromium rendered it."""
from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@dataclass
class Card:
    name: str = ""
    price: str = ""
    image: str | None = None
    url: str | None = None


@dataclass
class UserSection:
    user_id: str = ""
    cards: list[Card] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    error: str = ""
    json: str = ""


class PreviewPage(HTMLParser):
    """The page's user sections (cards, headers, error, raw JSON), its Liquid snippet and its script elements."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.users: list[UserSection] = []
        self.liquid = ""
        self.problem = ""
        self.scripts = 0
        self.tags: list[str] = []
        self._capture: tuple[str, str] | None = None  # (the tag whose text is captured, what it is)
        self._text: list[str] = []
        self._header = ""
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in VOID:
            self.tags.append(tag)
        attributes = dict(attrs)
        classes = (attributes.get("class") or "").split()
        user = self.users[-1] if self.users else None
        if tag == "script":
            self.scripts += 1
        elif tag == "section" and "user" in classes:
            self.users.append(UserSection())
        elif tag == "div" and "card" in classes and user is not None:
            user.cards.append(Card())
        elif tag == "img" and user is not None and user.cards:
            user.cards[-1].image = attributes.get("src")
        elif tag == "a" and user is not None and user.cards:
            user.cards[-1].url = attributes.get("href")
        what = {("div", "name"): "name", ("div", "price"): "price", ("p", "error"): "error", ("pre", "json"): "json",
                ("p", "problem"): "problem"}
        for (name, cls), kind in what.items():
            if tag == name and cls in classes:
                self._start(tag, kind)
        if tag == "textarea" and attributes.get("aria-label") == "Braze Liquid":
            self._start(tag, "liquid")
        elif tag == "code" and user is not None and self.tags[-2:] == ["h2", "code"]:
            self._start(tag, "user_id")
        elif tag in ("dt", "dd") and user is not None:
            self._start(tag, tag)

    def handle_data(self, data: str) -> None:
        if self._capture is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if self.tags and self.tags[-1] == tag:
            self.tags.pop()
        if self._capture is None or self._capture[0] != tag:
            return
        kind, text = self._capture[1], "".join(self._text)
        self._capture = None
        user = self.users[-1] if self.users else None
        if kind == "liquid":
            self.liquid = text
        elif kind == "problem":
            self.problem = text
        elif user is None:
            return
        elif kind in ("name", "price"):
            setattr(user.cards[-1], kind, text)
        elif kind == "dt":
            self._header = text
        elif kind == "dd":
            user.headers[self._header] = text
        else:
            setattr(user, kind, text)

    def _start(self, tag: str, kind: str) -> None:
        self._capture, self._text = (tag, kind), []

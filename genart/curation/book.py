"""book.pdf: a cover, then one kept image per page with its caption, through WeasyPrint
("Gallery of Unseen", stage 4), and the caption writers (a template, or an OpenAI-compatible
endpoint)."""

from __future__ import annotations

import html
import json
import os
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from genart.errors import UserError

PAGE_CSS = """
@page { size: A5; margin: 15mm; }
body { font-family: serif; }
.cover { page-break-after: always; text-align: center; padding-top: 35%; }
.plate { page-break-after: always; text-align: center; }
.plate:last-child { page-break-after: auto; }
.plate img { width: 100%; max-height: 140mm; object-fit: contain; image-rendering: pixelated; }
.caption { font-size: 10pt; margin-top: 6mm; }
"""


@dataclass(frozen=True)
class TemplateCaptions:
    """The default caption: a format string over `prompt` and `score`."""

    template: str = "{prompt} (score {score:.2f})"

    def __call__(self, prompt: str, score: float) -> str:
        return self.template.format(prompt=prompt, score=score)


@dataclass(frozen=True)
class OpenAICaptions:
    """A caption written by an OpenAI-compatible chat endpoint; its key comes from the
    environment variable `key_env`, never from config or flags."""

    url: str  # e.g. https://api.openai.com/v1 (…/chat/completions is appended)
    model: str
    key_env: str = "OPENAI_API_KEY"
    instruction: str = "Write a one-sentence guidebook caption for an image made from this prompt:"
    timeout: float = 60.0

    def __call__(self, prompt: str, score: float) -> str:
        key = os.environ.get(self.key_env)
        if not key:
            raise UserError(f"--captions openai reads its API key from ${self.key_env}; set it.")
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": f"{self.instruction} {prompt}"}],
        }
        request = urllib.request.Request(
            self.url.rstrip("/") + "/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            reply = json.load(response)
        return reply["choices"][0]["message"]["content"].strip()


def book_html(title: str, plates: Sequence[dict], captions) -> str:
    """The book as one HTML document: a cover, then a page per plate (image path, prompt, score)."""
    pages = [f'<section class="cover"><h1>{html.escape(title)}</h1>'
             f"<p>{len(plates)} image{'' if len(plates) == 1 else 's'}</p></section>"]  # fmt: skip
    for plate in plates:
        caption = html.escape(captions(plate["prompt"], plate["score"]))
        src = Path(plate["path"]).resolve().as_uri()
        pages.append(
            f'<section class="plate"><img src="{src}" alt="">'
            f'<p class="caption">{caption}</p></section>'
        )
    return f"<!doctype html><html><head><meta charset='utf-8'><style>{PAGE_CSS}</style></head>" + (
        f"<body>{''.join(pages)}</body></html>"
    )


def import_weasyprint():
    """weasyprint, or a UserError naming the system libraries it needs (Pango)."""
    try:
        import weasyprint
    except (ImportError, OSError) as err:
        raise UserError(
            f"book.pdf needs WeasyPrint and Pango ({type(err).__name__}: {err}). Install them: "
            "pip install weasyprint; apt-get install -y libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 "
            "(macOS: brew install pango). Or skip the book with --book-size 0."
        ) from None
    return weasyprint


def write_book(path: Path, title: str, plates: Sequence[dict], captions) -> Path:
    """book.pdf from `plates` in the given order (the caller sorts them by score)."""
    weasyprint = import_weasyprint()
    document = book_html(title, plates, captions)
    weasyprint.HTML(string=document, base_url=str(path.parent)).write_pdf(path)
    return path

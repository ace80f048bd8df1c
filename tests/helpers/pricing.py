"""The process's price book, reset between tests (the library itself never needs to)."""

from __future__ import annotations

from tracked_openai.pricing import PriceBook
from tracked_openai.pricing import book as book_module


def reset_price_book(book: PriceBook | None = None) -> None:
    """Use ``book`` from now on, or, with ``None``, load the book again from the settings on next
    use; forget which models were warned about."""
    with book_module._lock:
        book_module._book = book
        book_module.warned.clear()

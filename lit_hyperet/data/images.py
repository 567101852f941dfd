"""Where a sample's image lives (a file or in-memory bytes) and how it is opened."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from lit_hyperet.data.errors import DataError


@dataclass(frozen=True)
class ImageRef:
    """An image as a file path or as encoded bytes (e.g. a parquet ``{bytes, path}`` struct).

    ``source`` and ``record`` only serve error messages: the data file the reference came from and the record
    (``"pid 7"``, ``"id abc"``) it belongs to.
    """

    path: Path | None = None
    data: bytes | None = None
    source: str = ""
    record: str = ""

    def __post_init__(self) -> None:
        if (self.path is None) == (self.data is None):
            raise ValueError("ImageRef needs exactly one of path and data")

    def _where(self) -> str:
        origin = str(self.path) if self.path is not None else f"{self.source} (image bytes)"
        return ": ".join(p for p in (origin, self.record, "field 'image'") if p)

    def check_exists(self) -> None:
        """Raise ``DataError`` if the image is a file that does not exist (cheap: no decoding)."""
        if self.path is not None and not self.path.is_file():
            raise DataError(f"{self._where()}: image file not found")

    def open(self) -> Image.Image:
        """Decode the image as RGB; a missing or unreadable image raises ``DataError`` naming file, record, field."""
        self.check_exists()
        try:
            stream = io.BytesIO(self.data) if self.data is not None else self.path
            with Image.open(stream) as image:
                return image.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise DataError(f"{self._where()}: cannot read image: {exc}") from None

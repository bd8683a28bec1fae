"""File bytes -> bytes that TensorFlow decodes, by one rule, before any pixel is decoded. No TensorFlow here.

TF Serving's signature takes encoded JPEG, PNG, BMP or GIF. Everything else a user has is turned into a PNG
here, the same way for ``xray shards`` and for the clients (``xray predict``), so that the serving graph and
the training reader apply the same depth rule (xray.data.pixels) to the same bytes:

- DICOM (``.dcm``, or the ``DICM`` marker at byte 128): the pixel data (compressed transfer syntaxes through
  pylibjpeg's plugins), the modality LUT (rescale slope and intercept), the VOI LUT or the window centre and
  width when the file has one, MONOCHROME1 inverted so that bone is bright; the result stretched to the full
  16-bit range and written as a 16-bit grayscale PNG.
- TIFF and other formats Pillow reads: a PNG of the same depth (8-bit L, or 16-bit for I;16 and I sources).

Sizes are checked from the header (DICOM Rows x Columns, the image header through Pillow) before pixel data is
decoded: an image above MAX_PIXELS is refused with its size, never allocated.
"""

from __future__ import annotations

import io
import re

import numpy as np

# The most pixels one image may have, anywhere (shards, the serving graph, the clients): 36 megapixels, e.g.
# 6000 x 6000. A chest film is 2-18 megapixels (a 43 cm detector at 100 um is 4300 x 4300).
MAX_PIXELS = 36_000_000
# The file names xray shards and xray predict look for (a folder is searched for these).
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".dcm", ".dicom"}
MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"BM": "BMP", b"GIF87a": "GIF", b"GIF89a": "GIF"}
GRAYSCALE_DICOM = ("MONOCHROME1", "MONOCHROME2")


class ImageRefused(ValueError):
    """An input this project does not turn into pixels; the message names the reason."""


def is_dicom(data: bytes) -> bool:
    return len(data) >= 132 and data[128:132] == b"DICM"


def tf_format(data: bytes) -> str | None:
    """JPEG, PNG, BMP or GIF by the first bytes (what TensorFlow's decode_image recognises), else None."""
    for magic, name in MAGIC.items():
        if data.startswith(magic):
            return name
    return None


def check_pixels(width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise ImageRefused(f"{width}x{height} pixels ({width * height / 1e6:.1f} megapixels) is more than the "
                           f"{MAX_PIXELS / 1e6:.0f} megapixels an image may have; downscale it first")


def to_decodable(data: bytes) -> tuple[bytes, str | None]:
    """(bytes TensorFlow decodes, the source format when it was converted, else None): "DICOM", "TIFF", ...
    JPEG/PNG/BMP/GIF come back as they are."""
    if not data:
        raise ImageRefused("empty file")
    if is_dicom(data):
        return encode_png16(dicom_pixels(data)), "DICOM"
    if tf_format(data):
        return data, None
    image = open_header(data)
    check_pixels(image.width, image.height)
    try:
        image.load()
    except Exception as error:  # noqa: BLE001 - Pillow raises many kinds; the reason goes to the user
        raise unreadable(error) from None
    return encode_pil_png(image), image.format or "?"


def open_header(data: bytes):
    """Pillow's lazy open: format, mode and size from the header, no pixel decoded."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # our own bound (check_pixels), with a message that names the size
    try:
        return Image.open(io.BytesIO(data))
    except Exception as error:  # noqa: BLE001
        raise unreadable(error) from None


def unreadable(error: Exception) -> ImageRefused:
    """Pillow's error as the reason a file is skipped: "truncated image (...)" or "not a readable image (...)"."""
    reason = pil_reason(error)
    if "truncated" in reason.lower():
        return ImageRefused(f"truncated image ({reason})")
    return ImageRefused(f"not a readable image ({reason})")


def pil_reason(error: Exception) -> str:
    # Pillow names an in-memory buffer by its address ("cannot identify image file <_io.BytesIO object at 0x..>").
    return re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(error)) or type(error).__name__


def encode_pil_png(image) -> bytes:
    """A Pillow image as a grayscale PNG of its depth: 16-bit for I;16/I/F sources, 8-bit otherwise."""
    if image.mode.startswith("I") or image.mode == "F":
        pixels = np.asarray(image)
        if pixels.dtype != np.uint16:
            pixels = np.clip(pixels, 0, 65535).astype(np.uint16)
        return encode_png16(pixels, stretch=False)
    buffer = io.BytesIO()
    image.convert("L").save(buffer, format="PNG")
    return buffer.getvalue()


def encode_png16(pixels: np.ndarray, stretch: bool = True) -> bytes:
    """2-D pixels -> 16-bit grayscale PNG; ``stretch`` maps min..max to 0..65535 (a flat image gives zeros)."""
    from PIL import Image

    pixels = np.asarray(pixels)
    if stretch:
        values = pixels.astype(np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low) * 65535.0 if high > low else np.zeros_like(values)
        pixels = np.rint(scaled).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


def dicom_pixels(data: bytes) -> np.ndarray:
    """A DICOM radiograph's display values (float, bright = dense), by the rule in this module's docstring."""
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pragma: no cover - pydicom is a dependency; a trimmed install says what is missing
        raise ImageRefused("DICOM needs pydicom (pip install pydicom pylibjpeg pylibjpeg-openjpeg)") from None
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as error:  # noqa: BLE001 - pydicom raises InvalidDicomError, EOFError, ...
        raise ImageRefused(f"not a readable DICOM file ({error})") from None
    if "PixelData" not in ds:
        raise ImageRefused("DICOM file without pixel data (a report or a structured document?)")
    rows, columns = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    check_pixels(columns, rows)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise ImageRefused(f"DICOM with {frames} frames: a radiograph has one")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in GRAYSCALE_DICOM:
        raise ImageRefused(f"DICOM photometric interpretation {photometric or '(missing)'}: only grayscale "
                           f"radiographs ({', '.join(GRAYSCALE_DICOM)}) are read")
    try:
        raw = ds.pixel_array
    except Exception as error:  # noqa: BLE001 - a missing decoder plugin or damaged pixel data
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax)
        raise ImageRefused(f"cannot decode the DICOM pixel data (transfer syntax {name}): {error}") from None
    values = apply_modality_lut(raw, ds).astype(np.float64)
    if "VOILUTSequence" in ds or "WindowCenter" in ds:
        values = np.asarray(apply_voi_lut(values, ds, index=0), dtype=np.float64)
    if photometric == "MONOCHROME1":  # low values are bright: invert so that every film reads the same way
        values = values.max() + values.min() - values
    return values

"""Where an image lives on disk: <root>/<first 3 digits>/<digits 4-6>/<gbifID>-NN.<ext>."""

from __future__ import annotations


def prefix_dirs(gbif_id: int) -> tuple[str, str]:
    """The two prefix directories of a gbifID (same layout as the legacy downloader:
    the whole ID if shorter than 3 digits; '000' when it has fewer than 6)."""
    s = str(int(gbif_id))
    p1 = s[:3]
    p2 = s[3:6] if len(s) >= 6 else "000"
    return p1, p2


def image_dir(gbif_id: int) -> str:
    """The directory, relative to the root, that holds a gbifID's images."""
    return "/".join(prefix_dirs(gbif_id))


def image_relpath(gbif_id: int, image_no: int, ext: str) -> str:
    """Relative path of an image file; names come from the gbifID and image number only."""
    return f"{image_dir(gbif_id)}/{int(gbif_id)}-{int(image_no):02d}.{ext}"


def legacy_relpath(gbif_id: int) -> str:
    """Where the older flat-file downloader saved a gbifID's single image."""
    return f"{image_dir(gbif_id)}/{int(gbif_id)}.jpg"

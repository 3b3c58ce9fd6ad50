"""Identity of saved images: perceptual hash backfill, duplicate and near-duplicate groups."""

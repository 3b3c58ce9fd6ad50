"""Hand-over stage: a manifest of saved images with licences, and the files to cite them."""

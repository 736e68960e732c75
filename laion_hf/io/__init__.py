"""The io layer: file formats read and written by every stage (imports only the standard
library, webdataset and :mod:`laion_hf.errors`, never a stage)."""

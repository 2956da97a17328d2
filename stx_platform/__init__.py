"""stx-platform: spatial transcriptomics -> nuclei segmentation and classification training data."""

__version__ = "0.1.0"

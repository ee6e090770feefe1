"""Readers that turn files on disk into pixels and metadata (DICOM, ...)."""

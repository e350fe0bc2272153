"""Data adapters: LLaVA conversation JSON (with an image folder) and row datasets."""

from .llava import ReadReport, read_llava_json, validate_records

__all__ = ["ReadReport", "read_llava_json", "validate_records"]

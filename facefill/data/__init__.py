"""Data preparation and mask generation."""

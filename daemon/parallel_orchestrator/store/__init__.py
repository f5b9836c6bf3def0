"""Files in the owner-only state dir: folders with exact modes."""

"""imageport: the import and conversion pipeline of an Image API v2 service."""

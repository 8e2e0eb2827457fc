"""Model files: named by URL and fetched into the shared cache, found on disk, read ahead into the page cache."""

"""Where a job leaves: its outputs found and read, converted on request, returned inline or through S3."""
